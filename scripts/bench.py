#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""`make bench`: the in-tree C virtio_balloon.ko and virtio_balloon_rs.ko
side by side, in the same guests, interleaved (the order alternates each
repetition), with the same kernel and QEMU flags. Every figure is a
Rust/C ratio from one run; none is compared with a fixed time.

resize   A 2 GiB guest is asked (QMP `balloon`) for a 1792 MiB balloon
         (inflate), then for none (deflate); timed from the QMP command
         until `query-balloon` reports the target. Then the balloon is
         filled again and the driver unloaded with it full (rmmod).
oom      A guest with deflate-on-oom=on holds a balloon; a process then
         needs SHORT MiB more than the guest has available (256 MiB in a
         1 GiB guest, 1 GiB in a 2 GiB guest), which it can only get
         through OOM deflation. Timed from the host around the process.
         "floor" is the same process with the balloon empty: what it costs
         without any OOM (faulting its memory in). The handler time is the
         time inside the balloon's notifier, from tests/oom_stopwatch (two
         notifiers that bracket the balloon's priority), per notification
         and per rescue. The overshoot is what a driver gave back beyond
         what C's fixed 1 MiB steps gave in the same repetition (those
         match the need to within 1 MiB).
cache    The 2 GiB guest (deflate-on-oom=on) reads a disk in a loop, so the
         page cache holds most of its memory, while the balloon inflates to
         1792 MiB: time to the target, and `balloon_deflate` meanwhile
         (any is memory the balloon took and had to give back).
sweep    Balloons of 256 MiB, 1, 4, 8 and 16 GiB in guests 512 MiB plus
         1/16 larger (the Rust driver leaves the guest 1/32 of its RAM):
         inflation time per GiB, which should not grow with the balloon.
busy     resize and sweep again with every vCPU running a CPU-bound shell
         loop at normal priority for the whole measurement (the Rust
         driver allocates the next round on another CPU; here there is
         no idle one).
poll     resize again with QMP asked every 20 ms instead of every 2 ms
         (each `query-balloon` takes QEMU's global lock, which the
         device's kicks need too).
policy   oom again with the Rust driver on C's policy
         (oom_deflate_max_mib=1: 1 MiB per notification), so that the
         implementation's gain shows without the ramp's.
migrate  x86_64: a 2 GiB guest with a 1 GiB DIMM plugged in and onlined
         movable, a 960 MiB balloon over it; the DIMM's memory blocks
         offlined through sysfs (timed; every balloon page on it
         migrates) and onlined again. Then the balloon is filled again
         while a process faults in 960 MiB beside it and exits, leaving
         holes between the balloon's pages, and `compact_memory` is
         timed. The balloon pages each moved count (balloon_migrate).
split    Where the time goes, from QEMU's own trace of the balloon's kicks
         (virtio_queue_notify to the last virtqueue_flush after it) and
         config writes (the access to the device's config region to
         virtio_balloon_set_config): under TCG the vCPU that made them
         handles them, so the guest waits that long. The resize part's
         inflate, deflate and rmmod, and the 256 MiB OOM rescue on C's
         policy (1 MiB per notification), each split into the host's
         handling of the kicks, of the writes of `actual`, and the guest's
         own work (the rest of the time from its first kick to the last
         buffer returned; of the rmmod command; of the OOM handler's time).
         Traced, so a little slower than the untraced parts; the split,
         not the total, is the figure.
workingset
         Working-set protection, three ways: C, Rust as it loads
         (protection off) and Rust with protect_working_set=1, in one
         1 GiB guest with a disk throttled to 100 MiB/s (refaults cost
         I/O), at most 3 repetitions (WS_REPS). A process re-reads the
         disk's first 400 MiB in a loop (it fits before inflation, not
         after) while the host asks for an 800 MiB balloon: for the 20 s
         after the request, the reader's throughput, the refaults
         (workingset_refault_file) and the recent ones
         (workingset_activate_file), and the balloon's size at the end.
         Then the streaming case: a reader of the whole 2 GiB disk in a
         loop, the host asking for 700 MiB: time to the target and
         balloon_deflate meanwhile.

The table shows the ratio of medians, the median of the per-repetition
ratios (both drivers run back to back in each repetition) and in how many
repetitions Rust was faster. A plot of the balloon's size over time (QMP
samples) during an inflate, a deflate and an OOM rescue, for both drivers,
is written to scripts/bench-<arch>.png (BENCH_PNG overrides).

The "spread" column is the interquartile range of the paired ratios:
the run's noise.

    make bench                  11 repetitions (REPS=...), every part
    make bench PARTS=resize,oom only some parts
    make bench KERNEL=lean      on the guest kernel without memory hot-plug
                                and system sleep (scripts/kernel/lean.config);
                                writes scripts/bench-<arch>-lean.png/.json
"""

import collections
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import vm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"C": ("virtio_balloon", "/modules/virtio_balloon.ko"),
           "Rust": ("virtio_balloon_rs", "/modules/virtio_balloon_rs.ko")}
MIB = vm.PAGES_PER_MIB  # kernel pages per MiB

MEM_MIB = 2048
BALLOON_MIB = MEM_MIB - 256
OOM_CASES = ((1024, 800, 256), (2048, 1700, 1024))  # guest, balloon, short (MiB)
SWEEP_MIB = (256, 1024, 4096, 8192, 16384)
POLL_S = 0.002  # how often `query-balloon` is asked while a resize is timed
SLOW_POLL_S = 0.020  # the poll part's
RUST_1MIB = {"C": DRIVERS["C"],
             "Rust": ("virtio_balloon_rs", "/modules/virtio_balloon_rs.ko oom_deflate_max_mib=1")}


class Samples:
    """The balloon's size over time, from QMP: (seconds, MiB) pairs."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.points = []

    def add(self, mib):
        self.points.append((time.monotonic() - self.t0, mib))


class Sampler:
    """Samples the balloon size from a thread while the main thread waits on
    the guest's serial shell (it must not use QMP meanwhile)."""

    def __init__(self, g, samples, every=0.005):
        self.g, self.samples, self.every = g, samples, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.samples.add(self.g.balloon_mib())
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def timed_resize(g, balloon_mib, samples=None, timeout=600, poll=POLL_S):
    """Sets the balloon to `balloon_mib` and returns the seconds until the
    device reports it, asking QMP every `poll` seconds (sampling the size
    into `samples` if given)."""
    t0 = time.monotonic()
    g.set_balloon_mib(balloon_mib)
    deadline = t0 + timeout
    while True:
        size = g.balloon_mib()
        if samples is not None:
            samples.add(size)
        if size == balloon_mib:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise vm.GuestError(f"balloon did not reach {balloon_mib} MiB in {timeout}s")
        time.sleep(poll)


class Busy:
    """One CPU-bound shell loop per vCPU, at normal priority, for as long
    as the `with` block lasts (a production guest's vCPUs are often
    busy: the balloon's work and the host's kicks compete with them)."""

    def __init__(self, g):
        self.g = g

    def __enter__(self):
        self.g.run("rm -f /tmp/busy.pids; for i in $(seq $(nproc)); do "
                   "(while :; do :; done) </dev/null >/dev/null 2>&1 & "
                   "echo $! >> /tmp/busy.pids; done")
        return self

    def __exit__(self, *exc):
        self.g.run("kill $(cat /tmp/busy.pids); wait 2>/dev/null; rm -f /tmp/busy.pids")


def load(g, name, drivers=DRIVERS):
    """Loads driver `name` of `drivers` (module name, insmod arguments) and
    checks that it bound the balloon."""
    mod, ko = drivers[name]
    g.set_balloon_mib(0)
    g.run(f"insmod {ko}")
    dev = g.balloon_virtio_dev()
    bound = g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip()
    if bound != mod:
        raise vm.GuestError(f"{mod} did not bind (driver: {bound})")


def unload(g, name, drivers=DRIVERS):
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0, timeout=600)
    g.run(f"rmmod {drivers[name][0]}")


def interleaved(reps, one, drivers=DRIVERS):
    """Runs one(rep, name) for each of `drivers` in each repetition, the order
    alternating, after one untimed warm-up round each (rep None)."""
    for name in drivers:
        one(None, name)
    for rep in range(reps):
        order = list(drivers) if rep % 2 == 0 else list(reversed(drivers))
        for name in order:
            one(rep, name)


# -- resize ---------------------------------------------------------------
def resize(ctx, reps, results, traces, prefix="", beside=contextlib.nullcontext, poll=POLL_S):
    """Inflate, deflate and rmmod full; `prefix` names the condition,
    `beside` what runs in the guest meanwhile, `poll` how often QMP is
    asked."""
    with ctx.guest(mem_mib=MEM_MIB) as g:
        def one(rep, name):
            mod = DRIVERS[name][0]
            load(g, name)
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
            trace = rep == 0 and not prefix
            inf_s = Samples()
            with beside(g):
                inflate = timed_resize(g, BALLOON_MIB, inf_s if trace else None, poll=poll)
                dfl_s = Samples()
                deflate = timed_resize(g, 0, dfl_s if trace else None, poll=poll)
                timed_resize(g, BALLOON_MIB, poll=poll)
                t0 = time.monotonic()
                g.run(f"rmmod {mod}")
                rmmod = time.monotonic() - t0
            if g.balloon_mib() != 0:
                raise vm.GuestError(f"{mod}: rmmod left {g.balloon_mib()} MiB in the balloon")
            if rep is None:
                return
            if trace:
                traces[("inflate", name)] = inf_s.points
                traces[("deflate", name)] = dfl_s.points
            results.add(f"{prefix}inflate {BALLOON_MIB} MiB", name, inflate)
            results.add(f"{prefix}deflate {BALLOON_MIB} MiB", name, deflate)
            results.add(f"{prefix}rmmod, {BALLOON_MIB} MiB full", name, rmmod)
            print(f"    rep {rep + 1} {name:<4} inflate {inflate * 1e3:7.1f} ms   deflate "
                  f"{deflate * 1e3:7.1f} ms   rmmod {rmmod * 1e3:7.1f} ms", flush=True)
        interleaved(reps, one)


def bench_resize(ctx, reps, results, traces):
    resize(ctx, reps, results, traces)


def bench_poll(ctx, reps, results, traces):
    resize(ctx, reps, results, traces, prefix=f"poll {SLOW_POLL_S * 1e3:.0f} ms: ",
           poll=SLOW_POLL_S)


# -- oom ------------------------------------------------------------------
def stopwatch(g):
    """The oom_stopwatch counters: notifications, nanoseconds, pages freed."""
    out = g.run("cd /sys/kernel/debug/oom_stopwatch && cat calls ns freed").split()
    return dict(zip(("calls", "ns", "freed"), map(int, out)))


def memhog(g, need):
    out = g.run(f"memhog {need}", timeout=900)
    if f"memhog: {need} MiB ok" not in out:
        raise vm.GuestError(f"memhog {need} failed:\n{out}")


def bench_oom(ctx, reps, results, traces, drivers=DRIVERS, prefix=""):
    for mem, balloon, short in OOM_CASES:
        label = f"{prefix}OOM: obtain {short} MiB"
        print(f"==> {label}: {mem} MiB guest, deflate-on-oom=on, {balloon} MiB balloon",
              flush=True)
        with ctx.guest(mem_mib=mem, balloon="deflate-on-oom=on") as g:
            g.run("insmod /modules/oom_stopwatch.ko")
            fixed = {}

            def one(rep, name):
                load(g, name, drivers)
                timed_resize(g, balloon)
                g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
                need = g.meminfo()["MemAvailable"] // 1024 + short
                kills = g.vmstat()["oom_kill"]
                sw0, vm0 = stopwatch(g), g.vmstat()
                samples = Samples()
                trace = rep == 0 and short == OOM_CASES[0][2]
                t0 = time.monotonic()
                if trace:
                    with Sampler(g, samples):
                        memhog(g, need)
                else:
                    memhog(g, need)
                took = time.monotonic() - t0
                sw1, vm1 = stopwatch(g), g.vmstat()
                if vm1["oom_kill"] != kills:
                    raise vm.GuestError(f"{name}: a process was OOM-killed")
                calls = sw1["calls"] - sw0["calls"]
                gave = (vm1["balloon_deflate"] - vm0["balloon_deflate"]) / MIB
                if calls == 0 or gave == 0:
                    raise vm.GuestError(f"{name}: no OOM notification freed anything")
                handler = (sw1["ns"] - sw0["ns"]) / 1e9
                unload(g, name, drivers)
                if rep is None:
                    return
                # The same process with an empty balloon: no OOM at all, from
                # the same start (caches dropped, as before the rescue).
                if name == "C" and not prefix:
                    g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
                    floor_t0 = time.monotonic()
                    memhog(g, need)
                    floor = time.monotonic() - floor_t0
                    results.add(f"{label}: floor", "C", floor)
                    print(f"    rep {rep + 1} floor {floor * 1e3:8.1f} ms   (the same process, "
                          f"the balloon empty)", flush=True)
                if name == "C":
                    fixed[rep] = gave
                if trace and not prefix:
                    traces[("oom", name)] = samples.points
                results.add(label, name, took)
                results.add(f"{label}: handler per rescue", name, handler)
                results.add(f"{label}: handler per call", name, handler / calls)
                results.add(f"{label}: notifications", name, calls, unit="")
                results.add(f"{label}: MiB given back", name, gave, unit="MiB")
                print(f"    rep {rep + 1} {name:<4} {took * 1e3:8.1f} ms   {calls:4} "
                      f"notifications, {gave:6.1f} MiB given back, {handler * 1e3:6.1f} ms "
                      f"in the handler", flush=True)

            interleaved(reps, one, drivers)
            # The overshoot, per repetition: beyond what 1 MiB steps gave.
            for name in DRIVERS:
                gave = results.values(f"{label}: MiB given back", name)
                over = [gv - fixed[rep] for rep, gv in enumerate(gave)]
                results.add_all(f"{label}: overshoot", name, over, unit="MiB")


def bench_policy(ctx, reps, results, traces):
    """The OOM rescues with the Rust driver on C's policy (1 MiB per
    notification): what the implementation gains, without the ramp."""
    bench_oom(ctx, reps, results, traces, drivers=RUST_1MIB, prefix="same policy: ")


# -- cache ----------------------------------------------------------------
READER = ("(while :; do dd if=/dev/sda of=/dev/null bs=1M 2>/dev/null; done) "
          "</dev/null >/dev/null 2>&1 & echo $! > /tmp/reader.pid")


def cache_mib(g):
    m = g.meminfo()
    return (m["Buffers"] + m["Cached"]) // 1024


def bench_cache(ctx, reps, results, traces):
    disk = ctx.tmp / "cache-disk.raw"
    with open(disk, "wb") as f:
        f.truncate(1024 << 20)  # sparse: the host reads zeros fast
    # virtio-scsi: the guest kernel has it built in (virtio-blk it lacks,
    # and the page cache does not care which).
    qemu_args = ("-device", "virtio-scsi-pci,id=scsi0",
                 "-drive", f"file={disk},if=none,id=d0,format=raw",
                 "-device", "scsi-hd,drive=d0")
    with ctx.guest(mem_mib=MEM_MIB, balloon="deflate-on-oom=on", qemu_args=qemu_args) as g:
        g.run("test -b /dev/sda")

        def one(rep, name):
            load(g, name)
            g.run(READER)
            # The reader has filled the page cache (a block device's pages
            # count as Buffers).
            vm.wait_until(lambda: cache_mib(g), lambda c: c >= 900, 300, 0.5, "page cache (MiB)")
            free0, cache0 = g.meminfo()["MemFree"] // 1024, cache_mib(g)
            vm0 = g.vmstat()
            took = timed_resize(g, BALLOON_MIB)
            deflated = (g.vmstat()["balloon_deflate"] - vm0["balloon_deflate"]) / MIB
            g.run("kill $(cat /tmp/reader.pid); wait 2>/dev/null; sleep 0.2")
            unload(g, name)
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
            if rep is None:
                return
            results.add(f"inflate {BALLOON_MIB} MiB, busy page cache", name, took)
            results.add("  balloon_deflate meanwhile", name, deflated, unit="MiB")
            print(f"    rep {rep + 1} {name:<4} inflate {took * 1e3:7.1f} ms from "
                  f"{free0} MiB free and {cache0} MiB cached, {deflated:.0f} MiB deflated "
                  f"meanwhile", flush=True)
        interleaved(reps, one)


# -- sweep ----------------------------------------------------------------
def sweep(ctx, reps, results, prefix="", beside=contextlib.nullcontext):
    for size in SWEEP_MIB:
        label = f"{prefix}inflate {size} MiB, per GiB"
        with ctx.guest(mem_mib=size + 512 + size // 16) as g:
            def one(rep, name):
                load(g, name)
                g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
                with beside(g):
                    took = timed_resize(g, size)
                unload(g, name)
                if rep is not None:
                    results.add(label, name, took * 1024 / size)
            interleaved(reps, one)
        print(f"    {size} MiB: C {results.median(label, 'C') * 1e3:.0f} ms/GiB, "
              f"Rust {results.median(label, 'Rust') * 1e3:.0f} ms/GiB", flush=True)


def bench_sweep(ctx, reps, results, traces):
    sweep(ctx, reps, results)


def bench_busy(ctx, reps, results, traces):
    """The resize, rmmod and sweep parts with every vCPU busy."""
    resize(ctx, reps, results, traces, prefix="busy: ", beside=Busy)
    sweep(ctx, reps, results, prefix="busy: ", beside=Busy)


# -- migrate --------------------------------------------------------------
MIG_MEM, MIG_DIMM, MIG_BALLOON, MIG_HOG = 2048, 1024, 960, 960


def movable_blocks(g):
    """The memory blocks (sysfs names) online in ZONE_MOVABLE: the DIMM's."""
    out = g.run("cd /sys/devices/system/memory && grep -lx Movable memory*/valid_zones || true")
    return [line.split("/")[0] for line in out.split()]


def set_blocks(g, blocks, state):
    g.run(" && ".join(f"echo {state} > /sys/devices/system/memory/{b}/state" for b in blocks),
          timeout=900)


def bench_migrate(ctx, reps, results, traces):
    """A DIMM plugged in and onlined movable, the balloon inflated over it,
    then the DIMM's memory offlined (memory hot-unplug's first step: every
    balloon page on it migrates); then compaction of the balloon-filled
    guest (`compact_memory`)."""
    if vm.ARCH != "x86_64":
        print("    skipped: DIMM hot-plug on arm64 virt needs ACPI firmware (UEFI)", flush=True)
        return
    with ctx.guest(mem_mib=MIG_MEM, mem_opts="slots=2,maxmem=4G",
                   extra_append="memhp_default_state=online_movable") as g:
        total = g.meminfo()["MemTotal"]
        g.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1",
                                   "size": MIG_DIMM << 20})
        g.qmp.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
        g.mem_mib += MIG_DIMM  # QEMU's target counts the DIMM
        vm.wait_until(lambda: g.meminfo()["MemTotal"], lambda t: t == total + (MIG_DIMM << 10),
                      60, 0.2, "the DIMM to be onlined")
        blocks = movable_blocks(g)
        if not blocks:
            raise vm.GuestError("no memory block onlined movable")

        def one(rep, name):
            load(g, name)
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
            timed_resize(g, MIG_BALLOON)
            v0 = g.vmstat()
            t0 = time.monotonic()
            set_blocks(g, blocks, "offline")
            offline = time.monotonic() - t0
            v_off = g.vmstat()
            set_blocks(g, blocks, "online_movable")
            # A fragmented balloon: a process faults its memory in while the
            # balloon inflates beside it, then exits, leaving holes between
            # the balloon's pages that compaction fills by moving them.
            timed_resize(g, 0)
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches; rm -f /tmp/hog.out; "
                  f"(MEMHOG_MEMFREE=1 memhog {MIG_HOG} 600 > /tmp/hog.out 2>&1 &) ; "
                  "echo started")
            timed_resize(g, MIG_BALLOON)
            vm.wait_until(lambda: g.run("cat /tmp/hog.out"), lambda o: "MemFree" in o, 300, 0.2,
                          "memhog's pages touched")
            g.run("killall memhog; while pidof memhog >/dev/null; do sleep 0.1; done")
            v1 = g.vmstat()
            t0 = time.monotonic()
            g.run("echo 1 > /proc/sys/vm/compact_memory", timeout=900)
            compact = time.monotonic() - t0
            v2 = g.vmstat()
            unload(g, name)
            moved = (v_off["balloon_migrate"] - v0["balloon_migrate"]) / MIB
            compacted = (v2["balloon_migrate"] - v1["balloon_migrate"]) / MIB
            if moved == 0:
                raise vm.GuestError(f"{name}: offlining the DIMM migrated no balloon page")
            if rep is None:
                return
            results.add(f"offline the {MIG_DIMM} MiB DIMM", name, offline)
            results.add("  balloon pages migrated", name, moved, unit="MiB")
            results.add(f"compact_memory, {MIG_BALLOON} MiB balloon", name, compact)
            results.add("  balloon pages compacted", name, compacted, unit="MiB")
            print(f"    rep {rep + 1} {name:<4} offline {offline * 1e3:7.1f} ms "
                  f"({moved:.0f} MiB of balloon migrated)   compact_memory "
                  f"{compact * 1e3:7.1f} ms ({compacted:.0f} MiB)", flush=True)
        interleaved(reps, one)


# -- workingset -----------------------------------------------------------
WS_MEM, WS_SET, WS_BALLOON, WS_STREAM_BALLOON, WS_SECONDS = 1024, 400, 800, 700, 20
WS_VARIANTS = {"C": ("virtio_balloon", "/modules/virtio_balloon.ko"),
               "Rust": ("virtio_balloon_rs", "/modules/virtio_balloon_rs.ko"),
               "Rust, protected": ("virtio_balloon_rs",
                                   "/modules/virtio_balloon_rs.ko protect_working_set=1")}


def ws_reader(g, mib):
    """A process reading the disk's first `mib` MiB in a loop, one line in
    /tmp/passes per pass; the disk stays open (its page cache would go at
    its last close)."""
    g.run("rm -f /tmp/passes; (sleep 100000 < /dev/sda) </dev/null >/dev/null 2>&1 & "
          "echo $! > /tmp/holder.pid")
    g.run(f"(while :; do dd if=/dev/sda of=/dev/null bs=1M count={mib} 2>/dev/null; "
          "echo >> /tmp/passes; done) </dev/null >/dev/null 2>&1 & echo $! > /tmp/reader.pid")


def ws_stop(g):
    g.run("kill $(cat /tmp/reader.pid) $(cat /tmp/holder.pid); wait 2>/dev/null; sleep 0.2; "
          "sync; echo 3 > /proc/sys/vm/drop_caches")


def ws_passes(g):
    return int(g.run("cat /tmp/passes 2>/dev/null | wc -l").strip())


def bench_workingset(ctx, reps, results, traces):
    reps = min(reps, int(os.environ.get("WS_REPS", "3")))
    disk = ctx.tmp / "ws-disk.raw"
    with open(disk, "wb") as f:
        f.truncate(2048 << 20)
    qemu_args = ("-device", "virtio-scsi-pci,id=scsi0",
                 "-drive", f"file={disk},if=none,id=d0,format=raw,"
                 f"throttling.bps-total={100 << 20}",
                 "-device", "scsi-hd,drive=d0")
    rows = {}
    with ctx.guest(mem_mib=WS_MEM, balloon="deflate-on-oom=on", qemu_args=qemu_args) as g:
        # As in tests/test_e2e_workingset.py: the reader's I/O allocates
        # atomically (virtio-scsi's indirect descriptors, which fall back to
        # direct ones) while inflation keeps free memory at the watermarks,
        # and may warn; allowed unless this driver is on the stack.
        g.expect_oom = True
        g.run("test -b /dev/sda")

        def one(rep, variant):
            load(g, variant, WS_VARIANTS)
            ws_reader(g, WS_SET)
            # Cached: a pass at memory speed.
            vm.wait_until(lambda: g.meminfo()["Buffers"] // 1024, lambda b: b >= WS_SET - 8,
                          300, 0.5, "the reader's pages cached (MiB)")
            v0, p0 = g.vmstat(), ws_passes(g)
            time.sleep(5)
            before = (ws_passes(g) - p0) * WS_SET / 5
            v0, p0, t0 = g.vmstat(), ws_passes(g), time.monotonic()
            g.set_balloon_mib(WS_BALLOON)
            time.sleep(WS_SECONDS)
            v1, p1, t1 = g.vmstat(), ws_passes(g), time.monotonic()
            size = g.balloon_mib()
            during = (p1 - p0) * WS_SET / (t1 - t0)
            refaults = (v1["workingset_refault_file"] - v0["workingset_refault_file"]) / MIB
            recent = (v1["workingset_activate_file"] - v0["workingset_activate_file"]) / MIB
            ws_stop(g)
            unload(g, variant, WS_VARIANTS)
            if rep is None:
                return
            r = rows.setdefault(variant, {"before": [], "during": [], "refaults": [],
                                          "recent": [], "size": []})
            for k, x in (("before", before), ("during", during), ("refaults", refaults),
                         ("recent", recent), ("size", size)):
                r[k].append(x)
            print(f"    rep {rep + 1} {variant:<15} reader {before:6.0f} MiB/s before, "
                  f"{during:6.0f} MiB/s while the host asks; refaults {refaults:6.0f} MiB "
                  f"({recent:5.0f} recent); balloon {size:4.0f} of {WS_BALLOON} MiB", flush=True)

        interleaved(reps, one, WS_VARIANTS)

    # The streaming case: a reader of the whole disk, larger than the guest.
    with ctx.guest(mem_mib=WS_MEM, balloon="deflate-on-oom=on", qemu_args=qemu_args) as g:
        g.expect_oom = True  # as above
        g.run("test -b /dev/sda")

        def stream(rep, variant):
            load(g, variant, WS_VARIANTS)
            ws_reader(g, 2048)
            vm.wait_until(lambda: g.meminfo()["Buffers"] // 1024, lambda b: b >= 700,
                          300, 0.5, "page cache (MiB)")
            v0 = g.vmstat()
            took = timed_resize(g, WS_STREAM_BALLOON)
            deflated = (g.vmstat()["balloon_deflate"] - v0["balloon_deflate"]) / MIB
            ws_stop(g)
            unload(g, variant, WS_VARIANTS)
            if rep is None:
                return
            r = rows.setdefault(variant, {})
            r.setdefault("stream", []).append(took)
            r.setdefault("stream_deflated", []).append(deflated)
            print(f"    rep {rep + 1} {variant:<15} streaming: {WS_STREAM_BALLOON} MiB in "
                  f"{took * 1e3:7.1f} ms, {deflated:.0f} MiB deflated meanwhile", flush=True)

        interleaved(reps, stream, WS_VARIANTS)

    med = statistics.median
    print(f"\n    working set ({WS_SET} MiB re-read in a {WS_MEM} MiB guest, host asks "
          f"{WS_BALLOON} MiB; medians of {reps}):")
    print(f"    {'':17} {'reader before':>14} {'while asked':>12} {'refaults':>9} "
          f"{'recent':>7} {'balloon':>8} {'streaming':>10} {'deflated':>9}")
    for variant, r in rows.items():
        print(f"    {variant:17} {med(r['before']):9.0f} MiB/s {med(r['during']):6.0f} MiB/s "
              f"{med(r['refaults']):5.0f} MiB {med(r['recent']):3.0f} MiB "
              f"{med(r['size']):4.0f} MiB {med(r['stream']) * 1e3:7.0f} ms "
              f"{max(r['stream_deflated']):5.0f} MiB")
    results.workingset = rows


# -- split ----------------------------------------------------------------
# QEMU's own trace of the balloon's kicks and of its config writes: each is
# handled by the vCPU that made it (TCG has no ioeventfd), a kick from the
# notify until the last used buffer is pushed (one element at a time), a
# write of `actual` from the access to the device's config region until
# the device has set it.
SPLIT_TRACE = ("virtio_queue_notify", "virtqueue_flush", "memory_region_ops_write",
               "virtio_balloon_set_config")
TRACE_LINE = re.compile(r"^\d+@(\d+\.\d+):(" + "|".join(SPLIT_TRACE) + r") ?(.*)$")
Traced = collections.namedtuple("Traced", "kicks host span vdev writes write_host")


class KickTrace:
    """Reads QEMU's trace log (`-D`, `-msg timestamp=on`) as it grows."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def args(self):
        return ["-msg", "timestamp=on", "-D", str(self.path)] + \
            [a for e in SPLIT_TRACE for a in ("-trace", e)]

    def read(self, t0, t1, vdev=None):
        """What the balloon asked of the host between wall-clock times t0
        and t1: its kicks, the seconds the host spent handling them, the
        seconds from the first kick to the last buffer returned, its
        device, its config writes and the seconds the host spent on them.
        Without `vdev`, the balloon is the device kicked most (a resize:
        nothing else runs then)."""
        time.sleep(0.2)  # QEMU writes its log through stdio
        with open(self.path) as f:
            f.seek(self.offset)
            lines = f.readlines()
            self.offset = f.tell()
        ev, vq_dev = [], {}
        writes, write_host, got_config = 0, 0.0, None
        for line in lines:
            m = TRACE_LINE.match(line)
            if not m or not t0 <= float(m.group(1)) <= t1:
                continue
            t, what, a = float(m.group(1)), m.group(2), m.group(3).split()
            if what == "memory_region_ops_write":
                if "virtio-pci-device" in m.group(3):
                    got_config = t
            elif what == "virtio_balloon_set_config":
                if got_config is not None:
                    writes += 1
                    write_host += t - got_config
                got_config = None
            elif what == "virtio_queue_notify":  # "vdev V n N vq Q"
                vq_dev[a[5]] = a[1]
                ev.append((t, True, a[5]))
            else:  # virtqueue_flush: "vq Q count N"
                ev.append((t, False, a[1]))
        if vdev is None:
            counts = collections.Counter(vq_dev[vq] for _, notify, vq in ev if notify)
            vdev = counts.most_common(1)[0][0] if counts else None
        kicks, host, first, last, start, end = 0, 0.0, None, None, None, None
        for t, notify, vq in ev:
            if vq_dev.get(vq) != vdev:
                continue
            if notify:
                if start is not None and end is not None:
                    host += end - start
                start, end = t, None
                kicks += 1
                first = t if first is None else first
            elif start is not None:
                end = last = t
        if start is not None and end is not None:
            host += end - start
        if not kicks or last is None:
            raise vm.GuestError("split: no kick of the balloon in QEMU's trace")
        return Traced(kicks, host, last - first, vdev, writes, write_host)


def bench_split(ctx, reps, results, traces):
    """Where the time goes: the host's handling of the kicks and of the
    config writes against the guest's own work, for the resize and for OOM
    rescues on C's policy."""
    def add(label, name, tr, total):
        results.add(f"{label}: the host's handling of kicks", name, tr.host)
        results.add(f"{label}: ... and of config writes", name, tr.write_host)
        results.add(f"{label}: the guest's own work", name, total - tr.host - tr.write_host)
        results.add(f"{label}: kicks", name, tr.kicks, unit="")
        results.add(f"{label}: config writes", name, tr.writes, unit="")

    def host(tr):
        return (f"{tr.kicks:5} kicks, host {tr.host * 1e3:6.1f} ms, {tr.writes:5} config writes "
                f"{tr.write_host * 1e3:6.1f} ms")

    kt = KickTrace(ctx.tmp / "split-trace.log")
    with ctx.guest(mem_mib=MEM_MIB, qemu_args=kt.args()) as g:
        def one(rep, name):
            load(g, name)
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
            for op, size in (("inflate", BALLOON_MIB), ("deflate", 0)):
                t0 = time.time()
                took = timed_resize(g, size)
                tr = kt.read(t0, time.time())
                if rep is None:
                    continue
                add(f"split: {op} {BALLOON_MIB} MiB", name, tr, tr.span)
                print(f"    rep {rep + 1} {name:<4} {op} {took * 1e3:7.1f} ms: {host(tr)}, "
                      f"first kick to last buffer {tr.span * 1e3:6.1f} ms", flush=True)
            # rmmod with the balloon full: the whole command, shell round
            # trip and module teardown included, is the total.
            timed_resize(g, BALLOON_MIB)
            t0, m0 = time.time(), time.monotonic()
            g.run(f"rmmod {DRIVERS[name][0]}")
            took = time.monotonic() - m0
            tr = kt.read(t0, time.time())
            g.set_balloon_mib(0)
            if rep is None:
                return
            add(f"split: rmmod, {BALLOON_MIB} MiB full", name, tr, took)
            print(f"    rep {rep + 1} {name:<4} rmmod {took * 1e3:7.1f} ms: {host(tr)}", flush=True)
        interleaved(reps, one)
    mem, balloon, short = OOM_CASES[0]
    kt = KickTrace(ctx.tmp / "split-oom-trace.log")  # QEMU truncates its log
    with ctx.guest(mem_mib=mem, balloon="deflate-on-oom=on", qemu_args=kt.args()) as g:
        g.run("insmod /modules/oom_stopwatch.ko")

        def rescue(rep, name):
            load(g, name, RUST_1MIB)
            t0 = time.time()
            timed_resize(g, balloon)
            balloon_dev = kt.read(t0, time.time()).vdev
            g.run("sync; echo 3 > /proc/sys/vm/drop_caches")
            need = g.meminfo()["MemAvailable"] // 1024 + short
            sw0 = stopwatch(g)
            t0 = time.time()
            memhog(g, need)
            tr = kt.read(t0, time.time(), balloon_dev)
            sw1 = stopwatch(g)
            unload(g, name, RUST_1MIB)
            if rep is None:
                return
            handler = (sw1["ns"] - sw0["ns"]) / 1e9
            label = f"split: OOM {short} MiB, C's policy"
            results.add(f"{label}: handler", name, handler)
            add(label, name, tr, handler)
            print(f"    rep {rep + 1} {name:<4} OOM rescue: handler {handler * 1e3:6.1f} ms, "
                  f"{host(tr)}", flush=True)
        interleaved(reps, rescue, RUST_1MIB)


# -- results --------------------------------------------------------------
class Results:
    def __init__(self):
        self.rows = {}  # label -> {"unit": .., "C": [..], "Rust": [..]}
        self.workingset = None  # variant -> figure -> [..] (bench_workingset)

    def add(self, label, name, value, unit="s"):
        row = self.rows.setdefault(label, {"unit": unit, "C": [], "Rust": []})
        row[name].append(value)

    def add_all(self, label, name, values, unit="s"):
        for v in values:
            self.add(label, name, v, unit)

    def values(self, label, name):
        return self.rows[label][name]

    def median(self, label, name):
        return statistics.median(self.rows[label][name])

    def table(self):
        lines = [f"    {'':42} {'C':>10} {'Rust':>10} {'Rust/C':>7} {'paired':>7} "
                 f"{'spread':>11} {'Rust faster':>12}"]
        for label, row in self.rows.items():
            unit = row["unit"]
            c = statistics.median(row["C"]) if row["C"] else 0
            r = statistics.median(row["Rust"]) if row["Rust"] else 0

            def fmt(x):
                if unit == "s":
                    return f"{x * 1e3:7.1f} ms" if x >= 1e-3 else f"{x * 1e6:7.1f} us"
                return f"{x:7.1f} {unit:2}"
            ratio = paired = spread = wins = ""
            if (unit == "s" or unit == "") and row["C"] and row["Rust"]:
                if c > 0:
                    ratio = f"{r / c:7.2f}"
                pairs = self.pairs(label)
                if pairs:
                    paired = f"{statistics.median(pairs):7.2f}"
                    wins = f"{sum(1 for x in pairs if x < 1.0):>6}/{len(pairs)}"
                    if len(pairs) >= 4:
                        q1, _, q3 = statistics.quantiles(pairs, n=4)
                        spread = f"{q1:.2f}-{q3:.2f}"
            cs = fmt(c) if row["C"] else ""
            rs = fmt(r) if row["Rust"] else ""
            lines.append(f"    {label:42} {cs:>10} {rs:>10} {ratio:>7} {paired:>7} {spread:>11} "
                         f"{wins:>12}")
        return "\n".join(lines)

    def pairs(self, label):
        """Rust/C per repetition (both drivers ran back to back in each)."""
        row = self.rows[label]
        if len(row["Rust"]) != len(row["C"]):
            return []
        return [rr / cc for rr, cc in zip(row["Rust"], row["C"]) if cc > 0]

    def ratio(self, label):
        return self.median(label, "Rust") / self.median(label, "C")


def goals(res):
    """(description, met) for each target of the Rust/C ratios."""
    out = []

    def want(label, limit, what=None):
        if label in res.rows:
            r = res.ratio(label)
            out.append((f"{what or label}: Rust/C {r:.2f} <= {limit}", r <= limit))
    # x86_64 (TCG): 0.6 idle, and 0.7 for deflation with busy vCPUs;
    # arm64 with 64 KiB pages: 0.8, and no part slower than C.
    arm = vm.ARCH == "arm64"
    want(f"inflate {BALLOON_MIB} MiB", 0.8 if arm else 0.6)
    want(f"deflate {BALLOON_MIB} MiB", 0.8 if arm else 0.6)
    want(f"rmmod, {BALLOON_MIB} MiB full", 1.0 if arm else 0.8)
    want(f"busy: inflate {BALLOON_MIB} MiB", 0.8 if arm else 0.6)
    want(f"busy: deflate {BALLOON_MIB} MiB", 0.8 if arm else 0.7)
    want(f"busy: rmmod, {BALLOON_MIB} MiB full", 1.0)
    for _, _, short in OOM_CASES:
        want(f"same policy: OOM: obtain {short} MiB: handler per rescue", 0.8)
    want(f"offline the {MIG_DIMM} MiB DIMM", 1.0)
    want(f"compact_memory, {MIG_BALLOON} MiB balloon", 1.0)
    for _, _, short in OOM_CASES:
        want(f"OOM: obtain {short} MiB", 0.4 if short == 256 else 0.3)
        label = f"OOM: obtain {short} MiB: overshoot"
        if label in res.rows:
            over = res.median(label, "Rust")
            out.append((f"OOM {short} MiB: overshoot {over:.0f} MiB <= the need {short} MiB",
                        over <= short))
    want(f"inflate {BALLOON_MIB} MiB, busy page cache", 1.0)
    label = "  balloon_deflate meanwhile"
    if label in res.rows:
        d = max(res.values(label, "Rust"))
        out.append((f"page cache: Rust deflated {d:.0f} MiB while inflating (0)", d == 0))
    ws = res.workingset
    if ws and all(v in ws for v in WS_VARIANTS):
        med = statistics.median
        on, off = ws["Rust, protected"], ws["Rust"]
        out.append((f"working set, protected: balloon {med(on['size']):.0f} MiB stays short of "
                    f"the {WS_BALLOON} MiB target", med(on["size"]) < WS_BALLOON))
        out.append((f"working set, protected: reader {med(on['during']):.0f} MiB/s while asked, "
                    f"more than unprotected ({med(off['during']):.0f})",
                    med(on["during"]) > med(off["during"])))
        out.append((f"streaming, protected: target reached in {med(on['stream']) * 1e3:.0f} ms "
                    f"(unprotected {med(off['stream']) * 1e3:.0f}) with "
                    f"{max(on['stream_deflated']):.0f} MiB deflated (0)",
                    max(on["stream_deflated"]) == 0))
    per_gib = [res.median(f"inflate {s} MiB, per GiB", "Rust") for s in SWEEP_MIB
               if s >= 1024 and f"inflate {s} MiB, per GiB" in res.rows]
    if len(per_gib) > 1:
        spread = max(per_gib) / min(per_gib)
        out.append((f"Rust time per GiB from 1 to {SWEEP_MIB[-1] // 1024} GiB within 15%: "
                    f"{spread:.2f}x", spread <= 1.15))
    return out


def plot(traces, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is missing (make deps installs it)")
        return
    panels = [("inflate", f"inflate to {BALLOON_MIB} MiB"), ("deflate", "deflate to 0"),
              ("oom", f"OOM rescue of {OOM_CASES[0][2]} MiB")]
    panels = [p for p in panels if any((p[0], n) in traces for n in DRIVERS)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for name, style in (("C", "tab:gray"), ("Rust", "tab:orange")):
            pts = traces.get((key, name))
            if pts:
                ax.plot([t * 1e3 for t, _ in pts], [m for _, m in pts], label=name,
                        color=style, linewidth=1.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ms since the request")
        ax.set_ylabel("balloon (MiB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"virtio balloon, C vs Rust ({vm.ARCH}, {vm.PAGE_KIB} KiB pages, QMP samples)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"==> plot: {path}")


class Context:
    def __init__(self, kdir, initrd, accel, tmp):
        self.kdir, self.initrd, self.accel, self.tmp = kdir, initrd, accel, tmp
        self.guests = []

    def guest(self, **kw):
        g = vm.Guest(self.kdir, self.initrd, accel=self.accel,
                     workdir=self.tmp / f"g{len(self.guests)}", **kw)
        self.guests.append(g)
        return g


PARTS = {"resize": bench_resize, "busy": bench_busy, "poll": bench_poll, "oom": bench_oom,
         "policy": bench_policy, "cache": bench_cache, "sweep": bench_sweep,
         "migrate": bench_migrate, "workingset": bench_workingset, "split": bench_split}


def main():
    reps = int(os.environ.get("REPS", "11"))
    parts = [p for p in os.environ.get("PARTS", ",".join(PARTS)).split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"bench: unknown PARTS {unknown}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    # The guest kernel: guest (scripts/kernel/guest.config), or lean (the
    # same without memory hot-plug and system sleep, `make bench KERNEL=lean`).
    kind = os.environ.get("VBRS_KERNEL_KIND") or "guest"
    suffix = "" if kind == "guest" else f"-{kind}"
    png = Path(os.environ.get("BENCH_PNG") or ROOT / "scripts" / f"bench-{vm.ARCH}{suffix}.png")
    kdir = vm.kernel_dir()
    print(f"==> guest kernel: {kind} ({kdir})", flush=True)
    with tempfile.TemporaryDirectory(prefix="vbrs-bench-") as tmp:
        tmp = Path(tmp)
        initrd = vm.build_initramfs(kdir, tmp / "initramfs.cpio.gz")
        accel = "kvm" if vm.kvm_usable(kdir, initrd) else "tcg"
        ctx = Context(kdir, initrd, accel, tmp)
        results, traces = Results(), {}
        splats = []
        for part in parts:
            print(f"==> {part} ({accel}, {reps} repetitions per driver, interleaved)", flush=True)
            PARTS[part](ctx, reps, results, traces)
        for g in ctx.guests:
            splats += g.splats()
        # The raw figures, kept even if what follows fails.
        raw = png.with_suffix(".json")
        raw.write_text(json.dumps({"reps": reps, "accel": accel, "kernel": kind,
                                   "rows": results.rows,
                                   "workingset": results.workingset,
                                   "traces": {f"{k[0]} {k[1]}": v for k, v in traces.items()}}))
        print(f"==> raw figures: {raw}")
        print()
        print(results.table())
        plot(traces, png)
        if splats:
            print("console shows:\n" + "\n".join(splats))
            return 1
        print()
        met = True
        for what, ok in goals(results):
            print(f"    {'met    ' if ok else 'NOT met'}  {what}")
            met &= ok
        return 0


if __name__ == "__main__":
    sys.exit(main())
