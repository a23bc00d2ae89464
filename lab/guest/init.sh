#!/bin/busybox sh
# /init of the lab guest (PID 1). Kept tiny: the guest exists to be migrated and probed.
# Settings come from the kernel command line (vmtc.*), so one image serves every test:
#   vmtc.ip=10.1.1.2/24 vmtc.gw=10.1.1.1   eth0 address and default route (paper Fig. 2)
#   vmtc.tcp=7 vmtc.udp=7                  TCP echo server / UDP echo responder ports (0 = off)
#   vmtc.clock=50                          internal probe: print gaps over 50 ms (0 = off)
#   vmtc.clockus=200                       its sampling period in microseconds (paper: 0.2 ms)
#   vmtc.hb=10                             serial heartbeat on /dev/ttyS1 every 10 ms (0 = off)
#   vmtc.dirty=MB[:PERIOD_MS]              memory-dirtying load that verifies its memory (0 = off)
#   vmtc.fill=MB                           populated guest: MB MiB of non-zero data written once,
#                                          before the ready line (0 = off: the idle guest)
#   vmtc.disk=KIBPS:WIN:OFF                disk-writing load: KIBPS KiB/s of random data to
#                                          /dev/vda in 64 KiB blocks, cycling over WIN MiB from
#                                          OFF MiB, synced every second (0 = off)
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node; now that devtmpfs is mounted, point stdio at it.
exec 0</dev/console 1>/dev/console 2>&1

IP=10.1.1.2/24; GW=10.1.1.1; TCP=7; UDP=7; CLOCK=0; CLOCKUS=200; HB=0; DIRTY=0; FILL=0; DISK=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmtc.ip=*) IP="${arg#vmtc.ip=}" ;;
    vmtc.gw=*) GW="${arg#vmtc.gw=}" ;;
    vmtc.tcp=*) TCP="${arg#vmtc.tcp=}" ;;
    vmtc.udp=*) UDP="${arg#vmtc.udp=}" ;;
    vmtc.clock=*) CLOCK="${arg#vmtc.clock=}" ;;
    vmtc.clockus=*) CLOCKUS="${arg#vmtc.clockus=}" ;;
    vmtc.hb=*) HB="${arg#vmtc.hb=}" ;;
    vmtc.dirty=*) DIRTY="${arg#vmtc.dirty=}" ;;
    vmtc.fill=*) FILL="${arg#vmtc.fill=}" ;;
    vmtc.disk=*) DISK="${arg#vmtc.disk=}" ;;
  esac
done

# Order matters: each module needs the ones before it (docs/design.md#lab-facts, guest image).
for m in @MODULES@; do
  insmod "/lib/modules/$m.ko" || echo "VMTC-WARN insmod $m failed"
done

ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 10 ]; do usleep 100000; n=$((n + 1)); done
if [ -e /sys/class/net/eth0 ]; then
  ip addr add "$IP" dev eth0
  ip link set eth0 up
  [ -n "$GW" ] && ip route add default via "$GW"
  MAC=$(cat /sys/class/net/eth0/address)
else
  MAC=none
  echo "VMTC-WARN no eth0"
fi

[ "$TCP" != 0 ] && vmtc-probe tcp-echo "$TCP" &
[ "$UDP" != 0 ] && vmtc-probe udp-echo "$UDP" &
[ "$CLOCK" != 0 ] && vmtc-probe clock "$CLOCK" "$CLOCKUS" &
[ "$HB" != 0 ] && [ -e /dev/ttyS1 ] && vmtc-probe heartbeat /dev/ttyS1 "$HB" &
if [ "$DIRTY" != 0 ]; then
  DMB="${DIRTY%%:*}"; DPER=100
  case "$DIRTY" in *:*) DPER="${DIRTY#*:}" ;; esac
  # The load checks its own memory and reports on the console and the heartbeat's port; if it
  # ever ends (it never should: a crash may be corrupted memory), that is reported as a failure.
  REPORT=; [ -e /dev/ttyS1 ] && REPORT=/dev/ttyS1
  ( vmtc-probe dirty "$DMB" "$DPER" $REPORT
    echo "VMTC-MEM-BAD dirty load exited status=$?"
    [ -n "$REPORT" ] && echo "VMTC-MEM-BAD dirty load exited" > "$REPORT" ) &
fi

# The disk-writing load: a steady rate over a bounded window of the data disk, so the blocks
# dirtied between two syncs never exceed the window (lab/turntable/disk.ts reads it that way).
if [ "$DISK" != 0 ]; then
  if [ -b /dev/vda ]; then
    DKIB="${DISK%%:*}"; DREST="${DISK#*:}"; DWIN="${DREST%%:*}"; DOFF="${DREST#*:}"
    DBLK=$((DKIB / 64)); [ "$DBLK" -lt 1 ] && DBLK=1
    DWINB=$((DWIN * 16)); [ "$DBLK" -gt "$DWINB" ] && DBLK=$DWINB
    ( i=0
      while true; do
        dd if=/dev/urandom of=/dev/vda bs=64k count=$DBLK seek=$((DOFF * 16 + i)) conv=notrunc,fsync 2>/dev/null || echo "VMTC-WARN disk load write failed"
        i=$(( (i + DBLK) % DWINB )); [ $((i + DBLK)) -gt "$DWINB" ] && i=0
        sleep 1
      done ) &
    echo "VMTC-DISK-LOAD kib_per_s=$((DBLK * 64)) window_mib=$DWIN offset_mib=$DOFF"
  else
    echo "VMTC-WARN disk load asked but no /dev/vda"; DISK=nodisk
  fi
fi

# The populated guest's memory is written before the guest says it is ready (bounded: 600 s).
if [ "$FILL" != 0 ]; then
  vmtc-probe fill "$FILL" /tmp/vmtc-fill.done &
  n=0
  while [ ! -e /tmp/vmtc-fill.done ] && [ $n -lt 60000 ] && kill -0 $! 2>/dev/null; do usleep 10000; n=$((n + 1)); done
  [ -e /tmp/vmtc-fill.done ] || { echo "VMTC-WARN fill of $FILL MiB did not finish"; FILL=failed; }
fi

echo "VMTC-GUEST-READY ip=$IP mac=$MAC tcp=$TCP udp=$UDP clock=$CLOCK hb=$HB dirty=$DIRTY fill=$FILL disk=$DISK"
# PID 1 must never exit (the kernel would panic); reap orphans while waiting.
while true; do wait; sleep 3600; done
