# SPDX-License-Identifier: GPL-2.0
"""End-to-end: DEFLATE_ON_OOM. With the feature the balloon gives memory
back through the OOM notifier (and MemTotal never moves); without it, an
OOM never touches the balloon."""

import time

import vm

from vm import FRAMES_PER_MIB, PAGES_PER_MIB  # noqa: E402
DEFLATE_ON_OOM = 2


def load(g):
    g.run("insmod /modules/virtio_balloon_rs.ko")


def protect_shell(g):
    """Keeps the OOM killer away from the test's command shell (the shell
    loop that runs each command is the parent of the command's shell)."""
    g.run("echo -1000 > /proc/$PPID/oom_score_adj")


def test_with_the_feature_memtotal_stays_put(boot):
    g = boot(mem_mib=1024, balloon="deflate-on-oom=on")
    load(g)
    dev = g.balloon_virtio_dev()
    bits = g.run(f"cat /sys/bus/virtio/devices/{dev}/features").strip()
    assert bits[DEFLATE_ON_OOM] == "1"
    accepted = " ".join(g.virtio_status()["guest-features"]["dev-features"])
    assert "DEFLATE_ON_OOM" in accepted
    total0 = g.meminfo()["MemTotal"]
    vm0 = g.vmstat()
    g.set_balloon_mib(300)
    g.wait_balloon(lambda s: s == 300)
    assert g.meminfo()["MemTotal"] == total0
    assert g.vmstat()["balloon_inflate"] - vm0["balloon_inflate"] == 300 * PAGES_PER_MIB
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    assert g.meminfo()["MemTotal"] == total0


def test_sysrq_oom_deflates_one_mib_and_inflation_waits_for_the_host(boot):
    g = boot(mem_mib=1024, balloon="deflate-on-oom=on")
    g.expect_oom = True  # sysrq-f prints an OOM report
    load(g)
    protect_shell(g)
    g.set_balloon_mib(200)
    g.wait_balloon(lambda s: s == 200)
    # Notifiers just before and after the balloon's (priority 81 and 79)
    # see what it adds to the OOM killer's `freed` count.
    g.run("insmod /modules/oom_stopwatch.ko")
    vm0 = g.vmstat()
    g.run("echo f > /proc/sysrq-trigger")
    assert g.wait_balloon(lambda s: s < 200, timeout=30) == 199
    c = g.counters()
    assert c["oom_notifications"] == 1
    # 256 frames (1 MiB), counted in kernel pages: 16 of 64 KiB.
    assert c["oom_deflated_pages"] == PAGES_PER_MIB
    assert g.vmstat()["balloon_deflate"] - vm0["balloon_deflate"] == PAGES_PER_MIB
    sw = "/sys/kernel/debug/oom_stopwatch"
    assert int(g.run(f"cat {sw}/calls")) == 1
    assert int(g.run(f"cat {sw}/freed")) == PAGES_PER_MIB
    g.run("rmmod oom_stopwatch")
    # The host's target did not change, and the driver does not take the
    # memory right back: it waits for the host to ask again.
    time.sleep(1.5)
    assert g.balloon_mib() == 199
    assert g.counters()["target_frames"] == 200 * FRAMES_PER_MIB
    g.set_balloon_mib(150)
    assert g.wait_balloon(lambda s: s == 150) == 150
    g.set_balloon_mib(180)
    assert g.wait_balloon(lambda s: s == 180) == 180


def test_oom_deflation_rescues_a_process(boot):
    g = boot(mem_mib=512, balloon="deflate-on-oom=on")
    load(g)
    total0 = g.meminfo()["MemTotal"]
    g.set_balloon_mib(350)
    g.wait_balloon(lambda s: s == 350)
    avail = g.meminfo()["MemAvailable"] // 1024
    need = avail + 120  # clearly more than is available
    vm0 = g.vmstat()
    out = g.run(f"memhog {need}", timeout=300)
    assert f"memhog: {need} MiB ok" in out
    vm1 = g.vmstat()
    assert vm1["oom_kill"] == vm0["oom_kill"], "a process was OOM-killed"
    size = g.balloon_mib()
    assert size <= 350 - 100, size
    c = g.counters()
    assert c["oom_notifications"] > 0
    assert c["oom_deflated_pages"] == vm1["balloon_deflate"] - vm0["balloon_deflate"]
    assert g.meminfo()["MemTotal"] == total0
    assert "Out of memory" not in g.console_text()


def test_oom_storm_during_inflation_does_not_deadlock(boot):
    # The host inflates while a process needs more than is left: the OOM
    # notifier and the inflation work contend for the balloon lock.
    g = boot(mem_mib=512, balloon="deflate-on-oom=on")
    load(g)
    total0 = g.meminfo()["MemTotal"]
    vm0 = g.vmstat()
    for _ in range(3):
        g.set_balloon_mib(420)
        out = g.run("memhog 300", timeout=300)
        assert "memhog: 300 MiB ok" in out
    assert g.vmstat()["oom_kill"] == vm0["oom_kill"]
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    assert g.meminfo()["MemTotal"] == total0
    inflated, deflated = g.balloon_moved_since(vm0)
    assert inflated == deflated


def test_without_the_feature_oom_never_touches_the_balloon(boot):
    g = boot(mem_mib=1024)
    g.expect_oom = True
    load(g)
    dev = g.balloon_virtio_dev()
    assert g.run(f"cat /sys/bus/virtio/devices/{dev}/features").strip()[DEFLATE_ON_OOM] == "0"
    protect_shell(g)
    g.set_balloon_mib(200)
    g.wait_balloon(lambda s: s == 200)
    vm0 = g.vmstat()
    g.run("echo f > /proc/sysrq-trigger")
    time.sleep(1.5)
    assert g.balloon_mib() == 200
    assert g.vmstat()["balloon_deflate"] == vm0["balloon_deflate"]
    assert g.counters()["oom_notifications"] == 0
