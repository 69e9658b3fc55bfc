#!/usr/bin/env bash
# virtme-ng boot test: boots the guest kernel with the host's root filesystem
# and a virtio balloon device, loads virtio_balloon_rs, checks that it binds,
# unloads it, and propagates the guest's exit status.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

kdir=${1:-$("$VBRS_ROOT/scripts/kernel/build.sh")}
export PATH="$VBRS_VENV/bin:$PATH"
ko="$VBRS_ROOT/virtio_balloon_rs.ko"
[ -f "$ko" ] || vbrs_die "$ko not built (make)"

kvm=--disable-kvm
if [ "${VBRS_ACCEL:-}" = kvm ] || { [ -z "${VBRS_ACCEL:-}" ] && grep -qx yes "$VBRS_CACHE"/kvm-probe-"$(cat /proc/sys/kernel/random/boot_id)" 2>/dev/null; }; then
	kvm=
fi

guest_script=$(cat <<EOS
set -e
drv=/sys/bus/virtio/drivers/virtio_balloon_rs
# udev coldplug may have loaded the in-tree C driver from the kernel tree's
# modules despite the blacklist below (old kmod): make room for ours.
if [ -e /sys/module/virtio_balloon ]; then rmmod virtio_balloon; fi
insmod $ko
dev=\$(ls \$drv | grep '^virtio' || true)
[ -n "\$dev" ] || { echo "vng: virtio_balloon_rs did not bind"; exit 1; }
echo "vng: bound to \$dev"
grep -q 1 /sys/bus/virtio/devices/\$dev/features
rmmod virtio_balloon_rs
[ ! -e \$drv ] || { echo "vng: driver still registered after rmmod"; exit 1; }
if dmesg | grep -E 'BUG:|WARNING:|Call Trace:'; then echo "vng: splat"; exit 1; fi
echo "vng: clean unbind"
EOS
)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
timeout 300 vng --run "$kdir/arch/x86/boot/bzImage" $kvm --memory 1G \
	--append "modprobe.blacklist=virtio_balloon" \
	--qemu-opts="-device virtio-balloon-pci,id=balloon0" -- "$guest_script" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
grep -q "vng: clean unbind" "$log" || { [ "$rc" != 0 ] || rc=1; }
if [ "$rc" = 0 ]; then echo "vng boot test: 1 passed, 0 failed"; else echo "vng boot test: 0 passed, 1 failed"; fi
exit "$rc"
