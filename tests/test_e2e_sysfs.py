# SPDX-License-Identifier: GPL-2.0
"""End-to-end: the driver's state in sysfs (/sys/bus/virtio/devices/
virtioN/balloon/), for kernels where debugfs is not there: read-only files
of one value each, as docs/ABI/testing/sysfs-bus-virtio-balloon says, there
exactly while the driver is bound."""

import re

import pytest

import vm
from vm import FRAMES_PER_MIB, PAGES_PER_MIB

DRV = "/sys/bus/virtio/drivers/virtio_balloon_rs"
PARAMS = "/sys/module/virtio_balloon_rs/parameters"
ABI = vm.ROOT / "docs/ABI/testing/sysfs-bus-virtio-balloon"
FILES = {"target_frames", "actual_frames", "balloon_pages", "page_size", "floor_kib",
         "inflation_held", "oom_notifications", "oom_deflated_pages", "migrated_pages",
         "host_errors"}


# Not on the debug kernel: a listing; the reads run there in the tests below.
@pytest.mark.not_debug
def test_the_abi_document_names_exactly_the_files(boot):
    g = boot(mem_mib=512)
    g.run("insmod /modules/virtio_balloon_rs.ko")
    dev = g.balloon_virtio_dev()
    d = f"/sys/bus/virtio/devices/{dev}/balloon"
    listing = g.run(f"ls -l {d}").splitlines()[1:]
    names = {l.split()[-1] for l in listing}
    assert names == FILES, names
    # Read-only for everyone, writable by no one (root included).
    assert all(l.startswith("-r--r--r--") for l in listing), listing
    for f in sorted(FILES):
        assert g.run_rc(f"echo 1 > {d}/{f}")[0] != 0, f
    documented = set(re.findall(r"^What:\s+/sys/bus/virtio/devices/virtio<N>/balloon/(\w+)$",
                                ABI.read_text(), re.M))
    assert documented == FILES, documented ^ FILES
    g.run("rmmod virtio_balloon_rs")


def test_sysfs_follows_the_balloon_and_the_floor(boot):
    g = boot(mem_mib=1024)
    g.run("insmod /modules/virtio_balloon_rs.ko")
    s = g.balloon_sysfs()
    assert s["page_size"] == vm.PAGE_KIB * 1024
    assert s["target_frames"] == s["actual_frames"] == s["balloon_pages"] == 0
    assert s["inflation_held"] == "no"
    # The automatic floor: 1/32 of RAM (MemTotal; no balloon yet).
    total_kib = g.meminfo()["MemTotal"]
    assert abs(s["floor_kib"] - total_kib // 32) <= vm.PAGE_KIB, (s, total_kib)
    g.set_balloon_mib(256)
    g.wait_balloon(lambda m: m == 256)
    s = g.balloon_sysfs()
    assert s["target_frames"] == s["actual_frames"] == 256 * FRAMES_PER_MIB
    assert s["balloon_pages"] == 256 * PAGES_PER_MIB
    # RAM counts the balloon's pages, which left MemTotal.
    total_kib = g.meminfo()["MemTotal"] + 256 * 1024
    assert abs(s["floor_kib"] - total_kib // 32) <= vm.PAGE_KIB, (s, total_kib)
    # The same figures as debugfs.
    c = g.counters()
    for k in ("target_frames", "actual_frames", "oom_notifications", "oom_deflated_pages",
              "migrated_pages", "host_errors"):
        assert s[k] == c[k], (k, s[k], c[k])
    # Held at a floor of 700 MiB of a 1 GiB guest that the host asks 900 of.
    g.run(f"echo 700 > {PARAMS}/floor_mib")
    assert g.balloon_sysfs()["floor_kib"] == 700 * 1024
    g.set_balloon_mib(900)
    s = g.wait(g.balloon_sysfs, lambda s: s["inflation_held"] == "floor",
               300 if vm.DEBUG else 60, 0.2, "inflation held at the floor")
    assert s["actual_frames"] < 900 * FRAMES_PER_MIB
    assert s["target_frames"] == 900 * FRAMES_PER_MIB
    # The host asks for less than the balloon holds: nothing is held.
    g.set_balloon_mib(64)
    g.wait_balloon(lambda m: m == 64, timeout=300 if vm.DEBUG else 60)
    s = g.balloon_sysfs()
    assert s["inflation_held"] == "no" and s["balloon_pages"] == 64 * PAGES_PER_MIB
    g.run("rmmod virtio_balloon_rs")


def test_sysfs_reads_racing_unbind_find_the_driver_bound_or_no_file(boot):
    # Reads in a loop on one CPU while the other unbinds and binds the
    # driver: each read sees a value or no file, never stale data (a read
    # that outlived the driver's data would show on the debug kernel as a
    # KASAN report, which the console check fails).
    g = boot(mem_mib=512)
    g.run("insmod /modules/virtio_balloon_rs.ko")
    dev = g.balloon_virtio_dev()
    g.set_balloon_mib(64)
    g.wait_balloon(lambda m: m == 64)
    d = f"/sys/bus/virtio/devices/{dev}/balloon"
    cycles = 10 if vm.DEBUG else 30
    out = g.run(f"(while [ ! -e /tmp/stop ]; do cat {d}/* > /dev/null 2>&1; "
                f"echo >> /tmp/reads; done) & "
                f"for i in $(seq {cycles}); do echo {dev} > {DRV}/unbind; "
                f"echo {dev} > {DRV}/bind; done; touch /tmp/stop; wait; "
                f"wc -l < /tmp/reads; cat {d}/balloon_pages",
                timeout=600 if vm.DEBUG else 120)
    reads, pages = (int(x) for x in out.split())
    print(f"{reads} rounds of reads across {cycles} unbind/bind cycles")
    assert reads > cycles
    g.wait_balloon(lambda m: m == 64, timeout=300 if vm.DEBUG else 60)
    assert g.balloon_sysfs()["balloon_pages"] == 64 * PAGES_PER_MIB
    g.run(f"echo {dev} > {DRV}/unbind")
    assert g.run_rc(f"ls {d}")[0] != 0
    g.run(f"echo {dev} > {DRV}/bind")
    g.run("rmmod virtio_balloon_rs")
