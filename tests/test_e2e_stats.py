# SPDX-License-Identifier: GPL-2.0
"""End-to-end: memory statistics (STATS_VQ) as QEMU receives them, and
PAGE_POISON negotiation."""

import time

import pytest

import vm

STATS_VQ, PAGE_POISON = 1, 4
BALLOON = "/machine/peripheral/balloon0"


def load(g):
    g.run("insmod /modules/virtio_balloon_rs.ko")


def features(g):
    dev = g.balloon_virtio_dev()
    return g.run(f"cat /sys/bus/virtio/devices/{dev}/features").strip()


def fresh_stats(g, after, timeout=30):
    """The host's guest-stats once their last-update is later than `after`."""
    return vm.wait_until(
        lambda: g.qmp.cmd("qom-get", path=BALLOON, property="guest-stats"),
        lambda st: st["last-update"] > after, timeout, 0.2, f"stats update after {after}")


def stats_taken_after_now(g):
    """The host's guest-stats as the guest measured them after this call.
    An update stamped (in whole seconds, on arrival) after now may still
    hold figures the guest read just before; the one after it was read
    once the host had returned the buffer, so after the first arrived."""
    first = fresh_stats(g, int(time.time()))
    return fresh_stats(g, first["last-update"])


def test_stats_reach_the_host(boot):
    g = boot(mem_mib=1024)
    load(g)
    assert features(g)[STATS_VQ] == "1"
    g.qmp.cmd("qom-set", path=BALLOON, property="guest-stats-polling-interval", value=1)
    st = fresh_stats(g, 0)
    assert abs(st["last-update"] - time.time()) < 10
    s = st["stats"]
    assert s["stat-total-memory"] == g.meminfo()["MemTotal"] * 1024
    assert s["stat-free-memory"] > 0 and s["stat-available-memory"] > 0
    free0, minflt0 = s["stat-free-memory"], s["stat-minor-faults"]

    g.set_balloon_mib(300)
    g.wait_balloon(lambda x: x == 300)
    # Figures the guest read after the inflation finished.
    st = stats_taken_after_now(g)
    s = st["stats"]
    assert s["stat-free-memory"] < free0 - 250 * 1024 * 1024
    # Without DEFLATE_ON_OOM the balloon leaves MemTotal, and so the host's
    # total memory.
    assert s["stat-total-memory"] == g.meminfo()["MemTotal"] * 1024

    g.run("memhog 64")
    st = stats_taken_after_now(g)
    assert st["stats"]["stat-minor-faults"] >= minflt0 + 64 * vm.PAGES_PER_MIB
    assert g.counters()["stats_sent"] >= 3
    g.run("rmmod virtio_balloon_rs")


@pytest.mark.not_debug
def test_page_poison_follows_init_on_free(boot):
    # Freed pages zeroed (init_on_free=1): the device offers PAGE_POISON
    # (page-poison=on is QEMU's default) and the driver takes it.
    g = boot(mem_mib=512, extra_append="init_on_free=1")
    load(g)
    assert features(g)[PAGE_POISON] == "1"
    assert "PAGE_POISON" in " ".join(g.virtio_status()["guest-features"]["dev-features"])
    g.run("rmmod virtio_balloon_rs")


@pytest.mark.not_debug
def test_page_poison_refused_without_known_free_page_content(boot):
    g = boot(mem_mib=512)
    load(g)
    assert features(g)[PAGE_POISON] == "0"
    offered = " ".join(g.virtio_status()["host-features"]["dev-features"])
    assert "PAGE_POISON" in offered


def qemu_rss_mib(g):
    for line in open(f"/proc/{g.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_free_page_reporting_gives_memory_back_to_the_host(boot):
    g = boot(mem_mib=1024, balloon="free-page-reporting=on")
    load(g)
    assert features(g)[5] == "1", "REPORTING not negotiated"
    # Let the first reports after boot settle.
    time.sleep(4)
    base = qemu_rss_mib(g)
    g.run("memhog 500 6 > /tmp/hog.out 2>&1 &")
    peak = base
    deadline = time.monotonic() + (300 if vm.DEBUG else 60)
    while time.monotonic() < deadline:
        peak = max(peak, qemu_rss_mib(g))
        if "memhog" in g.run("cat /tmp/hog.out"):
            break
        time.sleep(0.25)
    # While the process holds 500 MiB, the host backs it.
    assert peak > base + 400, (base, peak)
    # After it exits, the guest reports the freed memory and the host
    # discards it: QEMU's resident size falls back within seconds.
    low = peak
    deadline = time.monotonic() + (120 if vm.DEBUG else 15)
    while time.monotonic() < deadline:
        low = min(low, qemu_rss_mib(g))
        if low < peak - 350:
            break
        time.sleep(0.25)
    assert low < peak - 350, (base, peak, low)
    c = g.counters()
    assert c["reports_sent"] > 0 and c["reported_ranges"] > 0
    g.run("rmmod virtio_balloon_rs")


def proc_figures(g):
    """/proc/vmstat and /proc/meminfo, read in one command."""
    out = g.run("cat /proc/vmstat; cat /proc/meminfo")
    figs = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ") if ":" not in line else line.partition(":")
        if v.strip():
            figs[k.strip()] = int(v.split()[0])
    return figs


@pytest.mark.not_debug
def test_stats_figures_are_the_guests_own(boot):
    # Each figure the host receives against the guest's own /proc, read
    # just before the guest read its figures and just after the host got
    # them. Event counts lie between the two readings; memory figures are
    # within a little noise of them. QEMU 7.2 reads tags 0 to 9.
    g = boot(mem_mib=1024)
    load(g)
    page = vm.PAGE_KIB * 1024
    # Huge pages allocated (tags 8 and 9 count those allocations) and some
    # page cache (tag 7), so that no figure is zero by default.
    # (Four of the smallest size there is: 2 MiB on x86_64, 64 KiB with
    # 16 KiB pages, 2 MiB with 64 KiB pages.)
    g.run("h=$(ls /sys/kernel/mm/hugepages | sort -t- -k2 -n | head -n1); "
          "echo 4 > /sys/kernel/mm/hugepages/$h/nr_hugepages; "
          "dd if=/dev/zero of=/tmp/cache bs=1M count=32 2>/dev/null")
    g.qmp.cmd("qom-set", path=BALLOON, property="guest-stats-polling-interval", value=1)
    fresh_stats(g, 0)
    before = proc_figures(g)
    s = stats_taken_after_now(g)["stats"]
    after = proc_figures(g)
    counts = {
        "stat-swap-in": ("pswpin", page),
        "stat-swap-out": ("pswpout", page),
        "stat-major-faults": ("pgmajfault", 1),
        "stat-minor-faults": ("pgfault", 1),
        "stat-htlb-pgalloc": ("htlb_buddy_alloc_success", 1),
        "stat-htlb-pgfail": ("htlb_buddy_alloc_fail", 1),
    }
    for tag, (name, unit) in counts.items():
        assert before[name] * unit <= s[tag] <= after[name] * unit, (tag, before[name], s[tag], after[name])
    assert s["stat-htlb-pgalloc"] >= 4
    # Memory figures: bytes, within 4 MiB or 64 pages of the readings.
    noise = max(4 * 1024 * 1024, 64 * page)
    memory = {
        "stat-free-memory": lambda f: f["MemFree"] * 1024,
        "stat-total-memory": lambda f: f["MemTotal"] * 1024,
        "stat-available-memory": lambda f: f["MemAvailable"] * 1024,
        "stat-disk-caches": lambda f: f["nr_file_pages"] * page,
    }
    for tag, read in memory.items():
        lo, hi = sorted((read(before), read(after)))
        assert lo - noise <= s[tag] <= hi + noise, (tag, read(before), s[tag], read(after))
    assert s["stat-total-memory"] == after["MemTotal"] * 1024
    assert s["stat-disk-caches"] >= 32 * 1024 * 1024
    g.run("rmmod virtio_balloon_rs")


# Not on the debug kernel: it reads a parameter; the stats path's locking
# and allocation are the same in both modes and run there in the tests above.
@pytest.mark.not_debug
def test_stats_tags_limit_what_the_host_receives(boot):
    # What QEMU receives, read from the buffer it holds (QEMU 7.2 drops the
    # tags it does not know before guest-stats shows them). Polling stays
    # off, so QEMU keeps the buffer the driver sent last.
    g = boot(mem_mib=512)
    params = "/sys/module/virtio_balloon_rs/parameters"

    def received():
        # The driver sent its first buffer at probe; QEMU took it.
        return vm.wait_until(g.stats_buffer_on_host, lambda st: len(st) > 0,
                             10, 0.2, "a stats buffer on the host")

    def tags(st):
        return sorted(t for t, _ in st)

    load(g)
    assert g.run(f"cat {params}/stats_tags").strip() == "16"
    # Tags 8 and 9 (huge pages) come with CONFIG_HUGETLB_PAGE, as in C.
    huge = "HugePages_Total" in g.meminfo()
    every = [t for t in range(16) if huge or t not in (8, 9)]
    st = received()
    # C's 6.12 set: all 16 tags.
    assert tags(st) == every, st
    total = dict(st)[5]
    assert total == g.meminfo()["MemTotal"] * 1024
    g.run("rmmod virtio_balloon_rs")

    g.run("insmod /modules/virtio_balloon_rs.ko stats_tags=10")
    st = received()
    assert tags(st) == [t for t in every if t < 10], st
    assert dict(st)[5] == g.meminfo()["MemTotal"] * 1024
    # Changed at run time: the next buffer the host asks for follows it.
    g.run(f"echo 16 > {params}/stats_tags")
    g.qmp.cmd("qom-set", path=BALLOON, property="guest-stats-polling-interval", value=1)
    fresh_stats(g, int(time.time()))
    g.qmp.cmd("qom-set", path=BALLOON, property="guest-stats-polling-interval", value=0)
    time.sleep(1)
    assert tags(received()) == every
    # Out of range: refused, the value stays.
    assert g.run_rc(f"echo 9 > {params}/stats_tags")[0] != 0
    assert "stats_tags: 9 is out of range (10 to 16)" in g.run("dmesg | tail -n 20")
    assert g.run(f"cat {params}/stats_tags").strip() == "16"
    g.run("rmmod virtio_balloon_rs")
