# SPDX-License-Identifier: GPL-2.0
"""End-to-end under injected faults (debug kernel, `make check-debug`):
page allocations failing during inflation, and slab allocations failing at
every step of module load and probe. Nothing may leak or crash; the driver
must still reach the host's target once allocations succeed again. On a
kernel without fault injection these tests are skipped."""

import re

import pytest

PAGES_PER_MIB = 256
FPA = "/sys/kernel/debug/fail_page_alloc"
FSL = "/sys/kernel/debug/failslab"


def load(g):
    g.run("insmod /modules/virtio_balloon_rs.ko")


def need_fault_injection(g):
    rc, _ = g.run_rc(f"[ -d {FPA} ] && [ -d {FSL} ]")
    if rc != 0:
        pytest.skip("needs fault injection (the debug kernel: make check-debug)")


def configure(g, base, **attrs):
    g.run("; ".join(f"echo {v} > {base}/{k.replace('_', '-')}" for k, v in attrs.items()))


def module_range(g):
    line = g.run("grep '^virtio_balloon_rs ' /proc/modules").split()
    size = int(line[1])
    base = int(next(t for t in line if t.startswith("0x")), 16)
    assert base != 0, "module address hidden (kptr_restrict)"
    return base, base + size


def test_page_allocation_failures_during_inflation(boot):
    g = boot(mem_mib=1024)
    need_fault_injection(g)
    load(g)
    total0 = g.meminfo()["MemTotal"]
    start, end = module_range(g)
    vm0 = g.vmstat()
    # Fail only allocations made with the driver on the stack (the balloon's
    # own pages), never the rest of the guest's.
    configure(g, FPA, ignore_gfp_wait="N", ignore_gfp_highmem="N", min_order=0,
              stacktrace_depth=32, require_start=start, require_end=end,
              task_filter="N", verbose=0, interval=1, probability=100, times=10)
    g.set_balloon_mib(200)
    g.wait_balloon(lambda s: s == 200, timeout=180)
    c = g.counters()
    assert int(g.run(f"cat {FPA}/times")) == 0, "not every injected failure was hit"
    assert c["alloc_failures"] >= 10
    # One message per episode of failures, not one per failure.
    assert g.console_text().count("out of memory for the balloon") <= c["alloc_failures"]
    assert g.console_text().count("out of memory for the balloon") <= 10

    # A third of the allocations fail while the balloon grows further.
    configure(g, FPA, probability=33, times=-1)
    g.set_balloon_mib(400)
    g.run("sleep 2")
    configure(g, FPA, probability=0)
    g.wait_balloon(lambda s: s == 400, timeout=180)
    assert g.counters()["alloc_failures"] > c["alloc_failures"]

    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    assert g.meminfo()["MemTotal"] == total0
    vm1 = g.vmstat()
    assert vm1["balloon_inflate"] - vm0["balloon_inflate"] == 400 * PAGES_PER_MIB
    assert vm1["balloon_deflate"] - vm0["balloon_deflate"] == 400 * PAGES_PER_MIB
    g.run("rmmod virtio_balloon_rs")


def test_slab_failures_at_every_step_of_load_and_probe(boot):
    g = boot(mem_mib=512)
    need_fault_injection(g)
    dev = g.balloon_virtio_dev()
    g.set_balloon_mib(16)
    # Allocations of the insmod task only (make-it-fail with the task
    # filter; module init and probe run in that task) fail once per load,
    # every n-th one: the kernel's count runs on across loads, so the
    # failure lands at a different point of module load or probe each time.
    # (6.12's injection points sit behind a static key that a nonzero
    # probability switches on.)
    for attrs in (FSL, FPA):
        configure(g, attrs, ignore_gfp_wait="N", verbose=0, task_filter="Y", probability=100)
    failed_loads = failed_probes = 0
    for n in range(1, 200, 4):
        configure(g, FSL, interval=n, times=1)
        configure(g, FPA, interval=n, times=1)
        rc, _ = g.run_rc("sh -c 'echo 1 > /proc/self/make-it-fail && "
                         "exec insmod /modules/virtio_balloon_rs.ko'")
        loaded = rc == 0
        bound = g.run(f"readlink /sys/bus/virtio/devices/{dev}/driver || true").strip()
        if not loaded:
            failed_loads += 1
        elif not bound.endswith("virtio_balloon_rs"):
            failed_probes += 1
        if loaded:
            g.run("rmmod virtio_balloon_rs")
    for attrs in (FSL, FPA):
        configure(g, attrs, probability=0, task_filter="N")
    # Both module loading and the device's probe met failures and coped.
    assert failed_loads > 0 and failed_probes > 0, (failed_loads, failed_probes)
    # After all that, a clean load binds and works, and nothing was left
    # behind (kmemleak runs after the test on the debug kernel).
    load(g)
    assert g.wait_balloon(lambda s: s == 16) == 16
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    g.run("rmmod virtio_balloon_rs")
