#!/usr/bin/env bash
# Debian packages vmtc's lab and tests need. Idempotent; quiet when everything is present.
#
# QEMU comes from Debian's bookworm-backports (10.x) when the machine runs bookworm: Debian 12's
# own QEMU 7.2 corrupts busy TCG guests during live migration (an upstream bug in TCG dirty
# tracking, fixed in QEMU 9.0 by commit 03bfc2188f "physmem: Fix migration dirty bitmap coherency
# with TCG memory access", never backported to 7.2; docs/qemu.md "Known-bad versions"). When
# backports cannot be reached the stable QEMU is kept, with a warning: the lab then runs, and the
# controller's pre-check names the bug.
# VMTC_LAB_QEMU=stable keeps Debian's stable QEMU on purpose.
set -euo pipefail
# prometheus: /usr/bin/promtool and /usr/bin/prometheus for the metrics tests (README "Metrics").
PKGS=(qemu-system-x86 qemu-utils busybox-static cpio ethtool iputils-ping iproute2 gcc libc6-dev xz-utils chromium tmux prometheus)
export DEBIAN_FRONTEND=noninteractive
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
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The package enables a Prometheus server on :9090 where systemd runs; the tests start their own
# (loopback, a free port, storage in a temp dir), so none is left listening here.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# ---- QEMU without the TCG dirty-tracking bug ------------------------------------------------
qemu_ver() { dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true; }
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "${VMTC_LAB_QEMU:-backports}" != stable ] && ! dpkg --compare-versions "$(qemu_ver)" ge 1:9.0; then
  if [ "$codename" = bookworm ]; then
    src=/etc/apt/sources.list.d/vmtc-bookworm-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      cat > "$src" <<'EOF'
# Added by vmtc's lab/install-deps.sh: QEMU >= 9.0 (docs/qemu.md "Known-bad versions").
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    echo "installing QEMU from bookworm-backports (stable has $(qemu_ver))"
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null; then
      :
    else
      echo "WARNING: QEMU from bookworm-backports could not be installed; keeping $(qemu_ver), which has a known live-migration bug under TCG (docs/qemu.md)" >&2
    fi
  else
    echo "WARNING: QEMU $(qemu_ver) is older than 9.0 and this is not Debian bookworm: install QEMU >= 9.0 for reliable live migration under TCG (docs/qemu.md)" >&2
  fi
fi
echo "lab QEMU: $(qemu-system-x86_64 --version | head -1)"
