#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""`make bench`: the in-tree C virtio_balloon.ko and virtio_balloon_rs.ko
side by side, in one guest, interleaved (the order alternates each
repetition), with the same kernel and QEMU flags.

Inflate: a 2 GiB guest is asked (QMP `balloon`) to shrink to 256 MiB, i.e. a
balloon of 1792 MiB; the time runs from the QMP command until `query-balloon`
reports the target. Deflate: back to 2 GiB, timed the same way. Medians and
Rust/C ratios are printed; the goal is a ratio of at most 1.0.

OOM: a 1 GiB guest with deflate-on-oom=on holds an 800 MiB balloon; a guest
process then allocates and touches OOM_MIB (256) MiB more than the guest has
available, which it can only get through OOM deflation (1 MiB per
notification). Timed from the host around the process.

Besides the ratio of medians (the goal), the table shows the median of the
per-repetition ratios (both drivers run back to back in each repetition)
and in how many repetitions Rust was faster.

    make bench                  5 repetitions
    make bench REPS=9           more
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import vm  # noqa: E402

MEM_MIB = 2048
LEFT_MIB = 256
BALLOON_MIB = MEM_MIB - LEFT_MIB
DRIVERS = {"C": ("virtio_balloon", "/modules/virtio_balloon.ko"),
           "Rust": ("virtio_balloon_rs", "/modules/virtio_balloon_rs.ko")}


def timed_resize(g, balloon_mib, timeout=300):
    """Sets the balloon to `balloon_mib` and returns the seconds until the
    device reports it."""
    t0 = time.monotonic()
    g.set_balloon_mib(balloon_mib)
    deadline = t0 + timeout
    while True:
        if g.balloon_mib() == balloon_mib:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise vm.GuestError(f"balloon did not reach {balloon_mib} MiB in {timeout}s")
        time.sleep(0.002)


OOM_MEM_MIB = 1024
OOM_BALLOON_MIB = 800
OOM_MIB = 256


def one_oom_run(g, name):
    mod, ko = DRIVERS[name]
    g.set_balloon_mib(0)
    g.run(f"insmod {ko}")
    g.set_balloon_mib(OOM_BALLOON_MIB)
    g.wait_balloon(lambda s: s == OOM_BALLOON_MIB, timeout=300)
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    need = g.meminfo()["MemAvailable"] // 1024 + OOM_MIB
    kills = g.vmstat()["oom_kill"]
    t0 = time.monotonic()
    out = g.run(f"memhog {need}", timeout=600)
    took = time.monotonic() - t0
    if f"memhog: {need} MiB ok" not in out or g.vmstat()["oom_kill"] != kills:
        raise vm.GuestError(f"{name}: the process was not rescued by the balloon")
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0, timeout=300)
    g.run(f"rmmod {mod}")
    return took


def one_run(g, name):
    mod, ko = DRIVERS[name]
    g.set_balloon_mib(0)
    g.run(f"insmod {ko}")
    dev = g.balloon_virtio_dev()
    bound = g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip()
    if bound != mod:
        raise vm.GuestError(f"{mod} did not bind (driver: {bound})")
    g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
    inflate = timed_resize(g, BALLOON_MIB)
    deflate = timed_resize(g, 0)
    g.run(f"rmmod {mod}")
    return inflate, deflate


def main():
    reps = int(os.environ.get("REPS", "5"))
    kdir = vm.kernel_dir()
    with tempfile.TemporaryDirectory(prefix="vbrs-bench-") as tmp:
        initrd = vm.build_initramfs(kdir, Path(tmp) / "initramfs.cpio.gz")
        accel = "kvm" if vm.kvm_usable(kdir, initrd) else "tcg"
        print(f"==> {MEM_MIB} MiB guest ({accel}), balloon 0 -> {BALLOON_MIB} MiB -> 0, "
              f"{reps} repetitions per driver, interleaved", flush=True)
        times = {n: {"inflate": [], "deflate": []} for n in DRIVERS}
        with vm.Guest(kdir, initrd, mem_mib=MEM_MIB, accel=accel, workdir=Path(tmp) / "g") as g:
            # One untimed round each, so both start from a warmed-up guest.
            for name in DRIVERS:
                one_run(g, name)
            for rep in range(reps):
                order = list(DRIVERS) if rep % 2 == 0 else list(reversed(DRIVERS))
                for name in order:
                    inf, dfl = one_run(g, name)
                    times[name]["inflate"].append(inf)
                    times[name]["deflate"].append(dfl)
                    print(f"    rep {rep + 1} {name:<4} inflate {inf * 1000:7.1f} ms   "
                          f"deflate {dfl * 1000:7.1f} ms", flush=True)
            splats = g.splats()
        print(f"==> OOM: {OOM_MEM_MIB} MiB guest, deflate-on-oom=on, {OOM_BALLOON_MIB} MiB "
              f"balloon, a process needs {OOM_MIB} MiB more than is available", flush=True)
        times["C"]["oom"] = []
        times["Rust"]["oom"] = []
        with vm.Guest(kdir, initrd, mem_mib=OOM_MEM_MIB, accel=accel, balloon="deflate-on-oom=on",
                      workdir=Path(tmp) / "g-oom") as g:
            for name in DRIVERS:
                one_oom_run(g, name)
            for rep in range(reps):
                order = list(DRIVERS) if rep % 2 == 0 else list(reversed(DRIVERS))
                for name in order:
                    took = one_oom_run(g, name)
                    times[name]["oom"].append(took)
                    print(f"    rep {rep + 1} {name:<4} oom     {took * 1000:7.1f} ms", flush=True)
            splats += g.splats()
        print()
        print(f"    {'':8} {'C median':>10} {'Rust median':>12} {'Rust/C':>8} "
              f"{'paired':>8} {'Rust faster':>12}")
        ok = True
        for op in ("inflate", "deflate", "oom"):
            c = statistics.median(times["C"][op])
            r = statistics.median(times["Rust"][op])
            ratio = r / c
            ok &= ratio <= 1.0
            # Each repetition runs both drivers back to back: the median of
            # the per-repetition ratios cancels drift between repetitions.
            pairs = [rr / cc for rr, cc in zip(times["Rust"][op], times["C"][op])]
            wins = sum(1 for x in pairs if x < 1.0)
            print(f"    {op:8} {c * 1000:8.1f} ms {r * 1000:10.1f} ms {ratio:8.2f} "
                  f"{statistics.median(pairs):8.2f} {wins:>6}/{len(pairs)}")
        if splats:
            print("console shows:\n" + "\n".join(splats))
            return 1
        print(f"\n    goal (Rust/C <= 1.0): {'met' if ok else 'NOT met'}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
