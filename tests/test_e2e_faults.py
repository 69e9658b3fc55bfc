# SPDX-License-Identifier: GPL-2.0
"""End-to-end under injected faults (debug kernel, `make check-debug`):
page allocations failing during inflation, and slab allocations failing at
every step of module load and probe. Nothing may leak or crash; the driver
must still reach the host's target once allocations succeed again. On a
kernel without fault injection these tests are skipped."""

import re

import pytest

from vm import PAGES_PER_MIB  # noqa: E402
FPA = "/sys/kernel/debug/fail_page_alloc"
FSL = "/sys/kernel/debug/failslab"
DRV = "/sys/bus/virtio/drivers/virtio_balloon_rs"


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
    assert c["alloc_failures"] >= 1
    # Ten failures in a row, then the target: one episode, one message (an
    # episode ends when the balloon reaches the host's target).
    said = "out of memory for the balloon"
    assert g.console_text().count(said) == 1, g.console_text()
    assert g.console_text().count("balloon reached the host's target") == 1

    # A third of the allocations fail while the balloon grows further: a
    # second episode, however many failures it has, and a second message.
    configure(g, FPA, probability=33, times=-1)
    g.set_balloon_mib(400)
    # At least one of them hit, however slow the guest.
    g.wait_counters(lambda x: x["alloc_failures"] > c["alloc_failures"], timeout=120)
    configure(g, FPA, probability=0)
    g.wait_balloon(lambda s: s == 400, timeout=180)
    failures = g.counters()["alloc_failures"] - c["alloc_failures"]
    assert g.console_text().count(said) == 2, (failures, g.console_text())

    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    assert g.meminfo()["MemTotal"] == total0
    vm1 = g.vmstat()
    assert vm1["balloon_inflate"] - vm0["balloon_inflate"] == 400 * PAGES_PER_MIB
    assert vm1["balloon_deflate"] - vm0["balloon_deflate"] == 400 * PAGES_PER_MIB
    g.run("rmmod virtio_balloon_rs")


def test_slab_failures_at_every_step_of_probe(boot):
    g = boot(mem_mib=512)
    need_fault_injection(g)
    dev = g.balloon_virtio_dev()
    g.set_balloon_mib(16)
    load(g)
    start, end = module_range(g)
    g.run(f"echo {dev} > {DRV}/unbind")
    # Only slab and page allocations with the driver on the stack count.
    # Probe runs in the task that writes `bind`; writing N to that task's
    # fail-nth makes its N-th such allocation fail, whichever kind it is,
    # and reading it back gives 0 once that allocation was reached. So N =
    # 1, 2, ... fails probe at each of its allocations in turn, until an N
    # past the last one, where nothing fails and the device binds. (Probe
    # makes about 200 of them, most in debugfs, whose failures it
    # tolerates: those binds succeed.)
    for attrs in (FSL, FPA):
        configure(g, attrs, ignore_gfp_wait="N", verbose=0, task_filter="N",
                  stacktrace_depth=32, require_start=start, require_end=end, probability=0)
    configure(g, FPA, ignore_gfp_highmem="N", min_order=0)
    outcomes = []
    for n in range(1, 1000):
        # Builtins only, in the shell's own task: a subshell or a command
        # would read a fail-nth of its own.
        out = g.run(f"echo {n} > /proc/thread-self/fail-nth; echo {dev} > {DRV}/bind; "
                    f"read r < /proc/thread-self/fail-nth; echo 0 > /proc/thread-self/fail-nth; "
                    f"echo fail-nth=$r; readlink /sys/bus/virtio/devices/{dev}/driver || true")
        injected = "fail-nth=0" in out
        bound = "virtio_balloon_rs" in out
        outcomes.append((n, injected, bound))
        if bound:
            g.run(f"echo {dev} > {DRV}/unbind")
        if not injected:
            break
    allocations = sum(1 for _, injected, _ in outcomes if injected)
    failed = [n for n, injected, bound in outcomes if injected and not bound]
    print(f"probe makes {allocations} allocations with the driver on the stack; "
          f"a failure of {len(failed)} of them fails it")
    # The sweep went past the last allocation: the last bind injected
    # nothing and bound.
    assert outcomes[-1][1:] == (False, True), outcomes
    assert allocations > 0 and failed, outcomes
    assert "probe with driver virtio_balloon_rs failed with error -12" in g.console_text()
    # After all that, the device binds and works, and nothing was left
    # behind (kmemleak scans after the test on the debug kernel).
    g.run(f"echo {dev} > {DRV}/bind")
    assert g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip() == "virtio_balloon_rs"
    assert g.wait_balloon(lambda s: s == 16) == 16
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    g.run("rmmod virtio_balloon_rs")
