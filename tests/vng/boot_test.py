#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""virtme-ng boot test: boots the guest kernel with the host's root
filesystem (vng) and a virtio balloon device with a QMP socket, loads
virtio_balloon_rs and checks, from both sides:

  * it binds, and the feature bits the guest negotiated are what QEMU says
    the guest accepted, each offered by the device, and every offered bit
    the driver implements is taken (PAGE_POISON only with known freed-page
    contents, as validate() decides);
  * the host moves the balloon over QMP (100 MiB out, then back) and both
    the driver's counters and QEMU's `actual` follow exactly;
  * it unloads cleanly, with no splat, and the guest's exit status is
    propagated.

Guest and host meet through a directory shared read-write (--rwdir)."""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import vm  # noqa: E402

MEM_MIB = 1024
BALLOON_MIB = 100
FRAMES = BALLOON_MIB * 256
# Balloon feature bits the driver implements (logic::feature_name).
IMPLEMENTED = {"MUST_TELL_HOST": 0, "STATS_VQ": 1, "DEFLATE_ON_OOM": 2,
               "FREE_PAGE_HINT": 3, "PAGE_POISON": 4, "REPORTING": 5}

GUEST = r"""
set -e
T={share}
drv=/sys/bus/virtio/drivers/virtio_balloon_rs
mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
# udev coldplug may have loaded the in-tree C driver from the kernel tree's
# modules despite the blacklist (old kmod): make room for ours.
if [ -e /sys/module/virtio_balloon ]; then rmmod virtio_balloon; fi
insmod {ko}
dev=$(ls $drv | grep '^virtio' || true)
[ -n "$dev" ] || {{ echo "vng: virtio_balloon_rs did not bind"; exit 1; }}
echo "vng: bound to $dev"
c=/sys/kernel/debug/virtio_balloon_rs/$dev
cat /sys/bus/virtio/devices/$dev/features > $T/features.tmp
grep MemTotal /proc/meminfo > $T/meminfo.tmp
mv $T/features.tmp $T/features
wait_for() {{ i=0; while [ ! -e "$1" ]; do i=$((i+1)); [ $i -lt 1200 ] || {{ echo "vng: no $1"; exit 1; }}; sleep 0.1; done; }}
wait_actual() {{
    i=0
    while [ "$(cat $c/actual_frames)" != "$1" ]; do
        i=$((i+1)); [ $i -lt 1200 ] || {{ echo "vng: actual_frames $(cat $c/actual_frames), want $1"; exit 1; }}
        sleep 0.1
    done
}}
wait_for $T/target
wait_actual {frames}
echo "$(cat $c/target_frames) $(cat $c/inflated_pages)" > $T/inflated.tmp
mv $T/inflated.tmp $T/inflated
wait_for $T/target0
wait_actual 0
rmmod virtio_balloon_rs
[ ! -e $drv ] || {{ echo "vng: driver still registered after rmmod"; exit 1; }}
if dmesg | grep -E 'BUG:|WARNING:|Call Trace:'; then echo "vng: splat"; exit 1; fi
echo "vng: clean unbind"
"""


def wait_file(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"vng exited ({proc.returncode}) before {path.name} appeared")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} never appeared")
        time.sleep(0.1)
    return path.read_text()


def check_host_side(share, proc):
    """The host's half, run while the guest script runs."""
    bits = wait_file(share / "features", proc).strip()
    qmp = vm.QMP(share / "qmp.sock")
    st = qmp.cmd("x-query-virtio-status", path="/machine/peripheral/balloon0/virtio-backend")
    offered = " ".join(st["host-features"]["dev-features"])
    accepted = " ".join(st["guest-features"]["dev-features"])
    for name, bit in IMPLEMENTED.items():
        took = bits[bit] == "1"
        qemu_took = f"VIRTIO_BALLOON_F_{name}" in accepted
        is_offered = f"VIRTIO_BALLOON_F_{name}" in offered
        assert took == qemu_took, f"{name}: guest says {took}, QEMU says {qemu_took}"
        assert not took or is_offered, f"{name} negotiated but not offered"
        # validate() refuses PAGE_POISON when freed pages are neither
        # poisoned nor zeroed (the vng kernel line sets neither), and
        # REPORTING follows it only when poisoning is on.
        if name != "PAGE_POISON":
            assert took == is_offered, f"{name}: offered {is_offered}, taken {took}"
    assert bits[IMPLEMENTED["PAGE_POISON"]] == "0", "PAGE_POISON needs poisoned or zeroed free pages"
    # Bits beyond the balloon's own: only the transport's, never unknown ones.
    transports = " ".join(st["guest-features"]["transports"])
    assert bits[32] == "1" and "VIRTIO_F_VERSION_1" in transports
    for bit in range(6, 24):
        assert bits[bit] == "0", f"device bit {bit} negotiated"

    ram = MEM_MIB << 20
    qmp.cmd("balloon", value=ram - (BALLOON_MIB << 20))
    (share / "target").write_text(str(FRAMES))
    target, inflated = wait_file(share / "inflated", proc).split()
    assert int(target) == FRAMES and int(inflated) == FRAMES
    assert qmp.cmd("query-balloon")["actual"] == ram - (BALLOON_MIB << 20)
    qmp.cmd("balloon", value=ram)
    (share / "target0").write_text("0")
    vm.wait_until(lambda: qmp.cmd("query-balloon")["actual"], lambda a: a == ram, 60, 0.2,
                  "QEMU's actual after deflating")
    qmp.close()


def main():
    kdir = Path(sys.argv[1]) if len(sys.argv) > 1 else vm.kernel_dir()
    ko = vm.ROOT / "virtio_balloon_rs.ko"
    if not ko.exists():
        print(f"{ko} not built (make)", file=sys.stderr)
        return 1
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ['PATH']}")
    kvm = [] if vm.kvm_usable_cached() else ["--disable-kvm"]
    with tempfile.TemporaryDirectory(prefix="vbrs-vng-") as tmp:
        share = Path(tmp)
        # vng hands its command to the guest on the kernel command line,
        # which has room for a line, not a script: the script goes in the
        # shared directory.
        (share / "guest.sh").write_text(GUEST.format(share=share, ko=ko, frames=FRAMES))
        cmd = ["vng", "--run", str(kdir / "arch/x86/boot/bzImage"), *kvm, "--memory", f"{MEM_MIB}M",
               "--rwdir", str(share), "--append", "modprobe.blacklist=virtio_balloon",
               # `=`: the value starts with a dash.
               f"--qemu-opts=-device virtio-balloon-pci,id=balloon0 "
               f"-qmp unix:{share}/qmp.sock,server=on,wait=off",
               "--", f"bash {share}/guest.sh"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        host_error = None
        try:
            check_host_side(share, proc)
        except Exception as e:  # the guest may still be waiting: stop it
            host_error = e
            proc.kill()
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        reader.join(timeout=10)
    sys.stdout.write("".join(out[-80:]))
    ok = rc == 0 and host_error is None and any("vng: clean unbind" in line for line in out)
    if host_error is not None:
        print(f"vng: host side failed: {host_error}", file=sys.stderr)
    print(f"vng boot test: {1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else (rc or 1)


if __name__ == "__main__":
    sys.exit(main())
