#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""`make run`: boots a guest with a virtio balloon device, loads
virtio_balloon_rs and shows what happens, live. QEMU is always stopped on
exit, Ctrl-C included.

    make run                 the demo, then exit
    make run HOLD=1          keep the guest and the readout until Ctrl-C
"""

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import vm  # noqa: E402

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def say(msg):
    print(f"{BOLD}==>{RESET} {msg}", flush=True)


def show(key, value):
    print(f"    {key:<22} {value}", flush=True)


def echo_driver_lines(g, seen):
    """Prints the driver's console lines after the first `seen`; returns
    them and the new count."""
    lines = [l for l in g.console_text().splitlines() if "virtio_balloon" in l]
    new = lines[seen:]
    for l in new:
        print(f"    {DIM}{l.strip()}{RESET}")
    return new, len(lines)


def show_host_stats(g):
    """Turns on QEMU's stats polling and shows what the host receives over
    the stats queue."""
    path = "/machine/peripheral/balloon0"
    say("memory statistics as the host receives them (QMP guest-stats)")
    g.qmp.cmd("qom-set", path=path, property="guest-stats-polling-interval", value=1)
    deadline = time.monotonic() + 10
    st = g.qmp.cmd("qom-get", path=path, property="guest-stats")
    while st["last-update"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        st = g.qmp.cmd("qom-get", path=path, property="guest-stats")
    for k, v in sorted(st["stats"].items()):
        if v < 0:
            continue  # QEMU's marker for a tag the guest did not send
        shown = f"{v / 2**20:.1f} MiB" if "memory" in k or "caches" in k or "swap" in k else v
        show("  " + k, shown)
    show("  last update", time.strftime("%H:%M:%S", time.localtime(st["last-update"])))


def resize_live(g, balloon_mib):
    """Asks for a balloon of `balloon_mib` MiB and shows the driver getting
    there: the host's target, the balloon (QEMU's actual), MemTotal and the
    driver's counters, until the target is reached."""
    t0 = time.monotonic()
    g.set_balloon_mib(balloon_mib)
    while True:
        size = g.balloon_mib()
        c = g.counters()
        mem_total = g.meminfo()["MemTotal"] // 1024
        done = size == balloon_mib
        line = (f"    t={time.monotonic() - t0:5.2f}s  target {c['target_frames'] // 256:5} MiB  "
                f"balloon {size:7.1f} MiB  MemTotal {mem_total:5} MiB  "
                f"msgs in/out {c['inflate_msgs']}/{c['deflate_msgs']}")
        print(("\r" if sys.stdout.isatty() else "") + line, end="" if sys.stdout.isatty() and not done else "\n",
              flush=True)
        if done or time.monotonic() - t0 > 60:
            if sys.stdout.isatty():
                print()
            return
        time.sleep(0.05 if sys.stdout.isatty() else 0.25)


def main():
    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    hold = os.environ.get("HOLD") == "1"
    say("guest kernel")
    kdir = vm.kernel_dir()
    show("build dir", kdir)
    with tempfile.TemporaryDirectory(prefix="vbrs-run-") as tmp:
        initrd = vm.build_initramfs(kdir, Path(tmp) / "initramfs.cpio.gz")
        accel = "kvm" if vm.kvm_usable(kdir, initrd) else "tcg"
        say(f"booting a 2 GiB guest with -device virtio-balloon-pci ({accel})")
        t0 = time.monotonic()
        with vm.Guest(kdir, initrd, mem_mib=2048, accel=accel, workdir=Path(tmp) / "g") as g:
            show("booted in", f"{time.monotonic() - t0:.1f} s")
            dev = g.balloon_virtio_dev()
            show("balloon device", f"{dev} (PCI, device ID 5)")
            say("insmod virtio_balloon_rs.ko")
            g.run("insmod /modules/virtio_balloon_rs.ko")
            drv = g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip()
            ok = drv == "virtio_balloon_rs"
            show("bound driver", f"{GREEN if ok else RED}{drv}{RESET}")
            bits = g.run(f"cat /sys/bus/virtio/devices/{dev}/features").strip()
            show("guest features", " ".join(str(i) for i, b in enumerate(bits) if b == "1"))
            st = g.virtio_status()
            feats = [f.split(":")[0] for f in st["guest-features"]["dev-features"]]
            show("device accepted", ", ".join(feats) or "none")
            trans = [f.split(":")[0] for f in st["guest-features"]["transports"]]
            show("transport", ", ".join(trans))
            show("device status", ", ".join(s.split(":")[0] for s in st["status"]["statuses"]))
            _, seen = echo_driver_lines(g, 0)

            mem = g.mem_mib
            for balloon in (512, 1024, 256, 0):
                say(f"host sets the balloon to {balloon} MiB "
                    f"(QMP balloon: guest RAM {mem - balloon} MiB)")
                resize_live(g, balloon)
                _, seen = echo_driver_lines(g, seen)
            c = g.counters()
            show("counters", "")
            for k in ("inflated_pages", "deflated_pages", "inflate_msgs", "deflate_msgs",
                      "migrated_pages", "alloc_failures", "host_errors"):
                show("  " + k, c[k])
            show_host_stats(g)
            vmst = g.vmstat()
            show("/proc/vmstat", f"balloon_inflate {vmst['balloon_inflate']}, "
                 f"balloon_deflate {vmst['balloon_deflate']}, "
                 f"balloon_migrate {vmst['balloon_migrate']}")
            say(f"the driver's state in sysfs: /sys/bus/virtio/devices/{dev}/balloon/")
            for k, v in g.balloon_sysfs().items():
                show("  " + k, v)

            if hold:
                say("holding the guest; Ctrl-C to stop")
                while True:
                    _, seen = echo_driver_lines(g, seen)
                    time.sleep(1)

            say("rmmod virtio_balloon_rs")
            g.run("rmmod virtio_balloon_rs")
            echo_driver_lines(g, seen)
            splats = g.splats()

        say("deflate-on-OOM: a 512 MiB guest with -device virtio-balloon-pci,deflate-on-oom=on")
        with vm.Guest(kdir, initrd, mem_mib=512, accel=accel, balloon="deflate-on-oom=on",
                      workdir=Path(tmp) / "g-oom") as g:
            g.run("insmod /modules/virtio_balloon_rs.ko")
            say("host sets the balloon to 350 MiB")
            resize_live(g, 350)
            show("guest MemTotal", f"{g.meminfo()['MemTotal'] // 1024} MiB (unchanged: deflate-on-OOM)")
            avail = g.meminfo()["MemAvailable"] // 1024
            need = avail + 120
            kills0 = g.vmstat()["oom_kill"]
            say(f"a process allocates {need} MiB; only {avail} MiB are available")
            g.run(f"memhog {need} > /tmp/hog.out 2>&1 &")
            t0 = time.monotonic()
            while True:
                out = g.run("cat /tmp/hog.out")
                c = g.balloon_sysfs()
                print(f"    t={time.monotonic() - t0:5.2f}s  balloon {g.balloon_mib():6.1f} MiB  "
                      f"OOM notifications {c['oom_notifications']:4}  "
                      f"pages given back {c['oom_deflated_pages']}", flush=True)
                if "memhog" in out or time.monotonic() - t0 > 120:
                    break
                time.sleep(0.3)
            kills = g.vmstat()["oom_kill"] - kills0
            rescued = "ok" in out and kills == 0
            show("process", f"{GREEN if rescued else RED}{out.strip() or 'did not finish'}{RESET}")
            show("OOM kills", kills)
            g.run("rmmod virtio_balloon_rs")
            splats += g.splats()
        if splats:
            say(f"{RED}the guest console shows problems:{RESET}")
            for l in splats:
                print("    " + l)
            return 1
    say(f"{GREEN}done{RESET}: guest stopped")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: guest stopped", file=sys.stderr)
        sys.exit(130)
