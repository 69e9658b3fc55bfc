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
notification). Timed from the host around the process. Most of that time
is the kernel's own reclaim before each notification; the "oom handler" row
shows the drivers' share: the time inside the balloon's OOM notifier per
notification, measured by tests/oom_stopwatch (two notifiers that bracket
the balloon's priority), for either driver alike.

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
    sw0 = stopwatch(g)
    t0 = time.monotonic()
    out = g.run(f"memhog {need}", timeout=600)
    took = time.monotonic() - t0
    sw1 = stopwatch(g)
    if f"memhog: {need} MiB ok" not in out or g.vmstat()["oom_kill"] != kills:
        raise vm.GuestError(f"{name}: the process was not rescued by the balloon")
    calls = sw1["calls"] - sw0["calls"]
    freed = sw1["freed"] - sw0["freed"]
    if calls == 0 or freed == 0:
        raise vm.GuestError(f"{name}: no OOM notification freed anything ({calls} calls)")
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0, timeout=300)
    g.run(f"rmmod {mod}")
    return took, (sw1["ns"] - sw0["ns"]) / calls / 1e9, calls, freed


def stopwatch(g):
    """The oom_stopwatch counters: notifications, nanoseconds, pages freed."""
    out = g.run("cd /sys/kernel/debug/oom_stopwatch && cat calls ns freed").split()
    return dict(zip(("calls", "ns", "freed"), map(int, out)))


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
        for name in DRIVERS:
            times[name]["oom"] = []
            times[name]["oom handler"] = []
        with vm.Guest(kdir, initrd, mem_mib=OOM_MEM_MIB, accel=accel, balloon="deflate-on-oom=on",
                      workdir=Path(tmp) / "g-oom") as g:
            g.run("insmod /modules/oom_stopwatch.ko")
            for name in DRIVERS:
                one_oom_run(g, name)
            for rep in range(reps):
                order = list(DRIVERS) if rep % 2 == 0 else list(reversed(DRIVERS))
                for name in order:
                    took, handler, calls, freed = one_oom_run(g, name)
                    times[name]["oom"].append(took)
                    times[name]["oom handler"].append(handler)
                    print(f"    rep {rep + 1} {name:<4} oom     {took * 1000:7.1f} ms   "
                          f"{calls} notifications, {freed} pages, "
                          f"{handler * 1e6:6.1f} us each in the handler", flush=True)
            splats += g.splats()
        print()
        print(f"    {'':11} {'C median':>11} {'Rust median':>12} {'Rust/C':>7} "
              f"{'paired':>7} {'Rust faster':>12}")
        ok = True
        for op in ("inflate", "deflate", "oom", "oom handler"):
            c = statistics.median(times["C"][op])
            r = statistics.median(times["Rust"][op])
            ratio = r / c
            ok &= ratio <= 1.0
            # Each repetition runs both drivers back to back: the median of
            # the per-repetition ratios cancels drift between repetitions.
            pairs = [rr / cc for rr, cc in zip(times["Rust"][op], times["C"][op])]
            wins = sum(1 for x in pairs if x < 1.0)
            unit, scale = ("us", 1e6) if op == "oom handler" else ("ms", 1e3)
            print(f"    {op:11} {c * scale:8.1f} {unit} {r * scale:9.1f} {unit} {ratio:7.2f} "
                  f"{statistics.median(pairs):7.2f} {wins:>6}/{len(pairs)}")
        if splats:
            print("console shows:\n" + "\n".join(splats))
            return 1
        print(f"\n    goal (Rust/C <= 1.0): {'met' if ok else 'NOT met'}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
