#!/usr/bin/env bash
# Debian packages vmtc's lab and tests need. Idempotent; quiet when everything is present.
set -euo pipefail
PKGS=(qemu-system-x86 qemu-utils busybox-static cpio ethtool iputils-ping iproute2 gcc libc6-dev xz-utils chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The guest image builder fetches the Debian kernel with `apt-get download`, which needs lists.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
