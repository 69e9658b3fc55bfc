# SPDX-License-Identifier: GPL-2.0
"""End-to-end: working-set protection (`protect_working_set`, off by
default). A process re-reads the first 400 MiB of a disk in a loop; the
host asks for a balloon that leaves the guest less than that. With the
protection on, inflation holds once the reader's pages come back soon
after the balloon evicted them (the kernel's workingset_activate_*),
and the balloon stays short of the target; off, the target wins as in C.
A reader that streams a disk larger than the guest is not a working set:
the balloon reaches its target, nothing is deflated."""

import time

import pytest

import vm
from vm import PAGES_PER_MIB

PARAMS = "/sys/module/virtio_balloon_rs/parameters"


def disk_args(tmp_path, mib):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(mib << 20)  # sparse: the host reads zeros fast
    return ("-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"file={disk},if=none,id=d0,format=raw",
            "-device", "scsi-hd,drive=d0")


def reader(g, mib):
    """Starts a process reading the disk's first `mib` MiB in a loop. The
    disk is held open meanwhile: its page cache is dropped at its last
    close."""
    g.run("(sleep 100000 < /dev/sda) </dev/null >/dev/null 2>&1 &")
    g.run(f"(while :; do dd if=/dev/sda of=/dev/null bs=1M count={mib} 2>/dev/null; done) "
          "</dev/null >/dev/null 2>&1 & echo $! > /tmp/reader.pid")


def activations(g):
    v = g.vmstat()
    return v["workingset_activate_anon"] + v["workingset_activate_file"]


def buffers_mib(g):
    return g.meminfo()["Buffers"] // 1024


def test_inflation_holds_while_it_evicts_the_working_set(boot, tmp_path):
    g = boot(mem_mib=1024, qemu_args=disk_args(tmp_path, 1024))
    # As in the streaming test: the reader's I/O may fail an atomic
    # allocation at the watermarks (this driver not on the stack).
    g.expect_oom = True
    g.run("test -b /dev/sda")
    g.run("insmod /modules/virtio_balloon_rs.ko protect_working_set=1")
    reader(g, 400)
    g.wait(lambda: buffers_mib(g), lambda b: b >= 390, 300 if vm.DEBUG else 60, 0.5,
           "the reader's pages cached (MiB)")
    a0 = activations(g)
    time.sleep(2)
    assert activations(g) - a0 < 64, "a working set that fits refaults nothing"
    # 800 of 1024 MiB: what is left does not hold the reader's 400.
    g.set_balloon_mib(800)
    g.wait_counters(lambda c: c["workingset_holds"] >= 1, timeout=300 if vm.DEBUG else 60)
    g.wait(g.balloon_sysfs, lambda s: s["inflation_held"] == "working_set",
           300 if vm.DEBUG else 30, 0.2, "inflation held for the working set")
    # Held, it gave back what it took of the reader's pages: they are
    # cached again and refault no more (while held).
    sizes, caches = [], []
    for _ in range(20):
        sizes.append(g.balloon_mib())
        caches.append(buffers_mib(g))
        time.sleep(0.5)
    c = g.counters()
    print(f"sizes {min(sizes):.0f} to {max(sizes):.0f} MiB; reader's cache {min(caches)} to "
          f"{max(caches)} MiB; {c['workingset_holds']} holds, {c['workingset_held_ms']} ms "
          f"ended, {c['workingset_returned_pages'] // PAGES_PER_MIB} MiB given back")
    assert c["workingset_returned_pages"] > 0, c
    # The host sees the balloon stay short of its target, the whole time.
    assert max(sizes) < 800, sizes
    assert g.qmp.cmd("query-balloon")["actual"] > (1024 - 800) * g.MIB
    # How much of the reader's 400 MiB is cached again varies run to run
    # (301 to 401 MiB seen): printed above, not asserted.
    assert "inflating evicts the guest's working set" in g.console_text()
    # Off while held: the host's target wins, as in C; the hold's time is
    # counted when it ends.
    g.run(f"echo 0 > {PARAMS}/protect_working_set")
    g.wait_balloon(lambda m: m == 800, timeout=300 if vm.DEBUG else 120)
    c = g.counters()
    assert c["workingset_held_ms"] > 0, c
    assert g.balloon_sysfs()["inflation_held"] == "no"
    g.run("kill $(cat /tmp/reader.pid)")
    g.set_balloon_mib(0)
    g.wait_balloon(lambda m: m == 0, timeout=300 if vm.DEBUG else 60)
    g.run("rmmod virtio_balloon_rs")


# Not on the debug kernel: the hold, the give-back and their locks run
# there in the test above; this one only takes page cache, paced.
@pytest.mark.not_debug
def test_a_streaming_reader_is_not_a_working_set(boot, tmp_path):
    # The 2020 case: a file larger than the guest read in a loop fills the
    # page cache; inflation must take it, with no deflation.
    g = boot(mem_mib=1024, balloon="deflate-on-oom=on", qemu_args=disk_args(tmp_path, 2048))
    # The reader's I/O allocates atomically (virtio-scsi's indirect
    # descriptors) while inflation holds free memory at the watermarks:
    # such an allocation may fail and warn (seen once in `make check`; the
    # ring then uses direct descriptors). Allowed here, as long as this
    # driver is not on the stack.
    g.expect_oom = True
    g.run("insmod /modules/virtio_balloon_rs.ko protect_working_set=1")
    reader(g, 2048)
    g.wait(lambda: buffers_mib(g), lambda b: b >= 700, 300 if vm.DEBUG else 60, 0.5,
           "page cache (MiB)")
    vm0 = g.vmstat()
    g.set_balloon_mib(700)
    g.wait_balloon(lambda m: m == 700, timeout=300 if vm.DEBUG else 120)
    c = g.counters()
    print(f"holds {c['workingset_holds']}, activations {activations(g) - (vm0['workingset_activate_anon'] + vm0['workingset_activate_file'])}")
    assert g.vmstat()["balloon_deflate"] == vm0["balloon_deflate"]
    assert c["workingset_holds"] == 0, c
    g.run("kill $(cat /tmp/reader.pid)")
    g.run("rmmod virtio_balloon_rs")
