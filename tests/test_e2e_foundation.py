# SPDX-License-Identifier: GPL-2.0
"""End-to-end: the module loads, binds to the real QEMU balloon device,
negotiates its features, and unbinds and unloads cleanly."""

import re
import subprocess

import pytest

import vm

DRV = "/sys/bus/virtio/drivers/virtio_balloon_rs"
MUST_TELL_HOST = 0
VERSION_1 = 32
FEATURE_BITS = {"STATS_VQ": 1, "DEFLATE_ON_OOM": 2, "FREE_PAGE_HINT": 3,
                "PAGE_POISON": 4, "REPORTING": 5}


def load(g):
    g.run("insmod /modules/virtio_balloon_rs.ko")


def bound_devices(g):
    rc, out = g.run_rc(f"ls {DRV}")
    if rc != 0:
        return []
    return sorted(x for x in out.split() if x.startswith("virtio"))


@pytest.mark.not_debug
def test_modinfo_metadata(modules):
    out = subprocess.run(["modinfo", str(modules)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    fields = {}
    for line in out.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), []).append(v.strip())
    assert fields["license"] == ["GPL"]
    assert fields["description"][0]
    assert "virtio:d00000005v*" in fields["alias"]
    assert fields["name"] == ["virtio_balloon_rs"]


def test_binds_and_negotiates(boot):
    g = boot()
    dev = g.balloon_virtio_dev()
    load(g)
    assert bound_devices(g) == [dev]
    assert g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip() == "virtio_balloon_rs"

    # The guest's negotiated feature bits (a string of 0/1 per bit) are what
    # the device saw: only bits the driver implements, the transport's
    # VERSION_1, and MUST_TELL_HOST only if the device offers it (QEMU's
    # does not).
    bits = g.run(f"cat /sys/bus/virtio/devices/{dev}/features").strip()
    st = g.virtio_status()
    offered = " ".join(st["host-features"]["dev-features"])
    accepted = " ".join(st["guest-features"]["dev-features"])
    assert bits[VERSION_1] == "1"
    assert (bits[MUST_TELL_HOST] == "1") == ("MUST_TELL_HOST" in offered)
    assert ("MUST_TELL_HOST" in accepted) == ("MUST_TELL_HOST" in offered)
    # STATS_VQ is offered and taken. PAGE_POISON is offered but refused:
    # this guest neither poisons nor zeroes freed pages. DEFLATE_ON_OOM is
    # not offered by this device. Features not implemented are never taken.
    assert "VIRTIO_BALLOON_F_STATS_VQ" in offered and "STATS_VQ" in accepted
    assert bits[FEATURE_BITS["STATS_VQ"]] == "1"
    assert "VIRTIO_BALLOON_F_PAGE_POISON" in offered
    for name in ("DEFLATE_ON_OOM", "FREE_PAGE_HINT", "PAGE_POISON", "REPORTING"):
        assert name not in accepted
        assert bits[FEATURE_BITS[name]] == "0"
    assert any("DRIVER_OK" in s for s in st["status"]["statuses"])
    # The probe message names the features.
    assert re.search(r"virtio_balloon_rs virtio\d+: bound: features .*VERSION_1", g.console_text())


@pytest.mark.not_debug
def test_indirect_descriptors_are_refused(boot):
    # The device offers RING_F_INDIRECT_DESC; validate() must clear it.
    g = boot()
    load(g)
    st = g.virtio_status()
    assert "VIRTIO_RING_F_INDIRECT_DESC" in " ".join(st["host-features"]["transports"])
    assert "VIRTIO_RING_F_INDIRECT_DESC" not in " ".join(st["guest-features"]["transports"])


def test_config_change_reaches_the_driver(boot):
    # The host's target travels through config space, the config-change
    # callback and the work item; the driver's counters show the exact
    # frame count it read.
    g = boot(mem_mib=1024)
    load(g)
    before = g.counters()["config_changes"]
    g.qmp.cmd("balloon", value=(g.mem_mib - 100) * 1024 * 1024)
    frames = 100 * vm.FRAMES_PER_MIB
    for _ in range(100):
        if g.counters()["target_frames"] == frames:
            break
        g.run("sleep 0.1")
    c = g.counters()
    assert c["target_frames"] == frames
    assert c["config_changes"] > before


def test_unbind_rebind_and_rmmod(boot):
    g = boot()
    dev = g.balloon_virtio_dev()
    load(g)
    g.run(f"echo {dev} > {DRV}/unbind")
    assert bound_devices(g) == []
    assert "DRIVER_OK" not in " ".join(g.virtio_status()["status"]["statuses"])
    g.run(f"echo {dev} > {DRV}/bind")
    assert bound_devices(g) == [dev]
    assert any("DRIVER_OK" in s for s in g.virtio_status()["status"]["statuses"])
    g.run("rmmod virtio_balloon_rs")
    assert "virtio_balloon_rs" not in g.run("cat /proc/modules")
    rc, _ = g.run_rc(f"ls {DRV}")
    assert rc != 0, "driver directory must be gone after rmmod"
    assert f"virtio_balloon_rs {dev}: unbound;" in g.console_text()


def test_repeated_load_unload(boot):
    g = boot()
    dev = g.balloon_virtio_dev()
    for _ in range(10):
        load(g)
        assert bound_devices(g) == [dev]
        g.run("rmmod virtio_balloon_rs")
        assert bound_devices(g) == []
    # The device can still be driven by the reference C driver afterwards.
    g.run("insmod /modules/virtio_balloon.ko")
    assert g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip() == "virtio_balloon"
    g.run("rmmod virtio_balloon")


def test_binds_no_other_virtio_device(boot):
    # A guest with a virtio device that is not a balloon (an entropy
    # source, ID 4) and no balloon: the driver loads, binds nothing and
    # says nothing; the other device stays unbound.
    g = boot(balloon=None, qemu_args=["-device", "virtio-rng-pci"])
    rng = g.run("grep -l 0x0004 /sys/bus/virtio/devices/*/device").split("/")[-2]
    g.run("dmesg -c > /dev/null")
    load(g)
    assert bound_devices(g) == []
    assert g.run_rc(f"readlink /sys/bus/virtio/devices/{rng}/driver")[0] != 0
    # Nothing said of any device (the kernel's taint note on loading an
    # out-of-tree module is all there is).
    assert "virtio_balloon_rs virtio" not in g.run("dmesg")
    g.run("rmmod virtio_balloon_rs")


def readme_counters():
    """The file names in the README's counter table."""
    text = (vm.ROOT / "README.md").read_text()
    table = text.split("### Counters", 1)[1].split("\n###", 1)[0]
    names = set()
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) > 2 and "`" in cells[1]:
            names.update(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return names


@pytest.mark.not_debug
def test_readme_lists_exactly_the_counters_in_debugfs(boot):
    # The driver's counter list (one counters! definition) against the
    # README's table, through what a user actually finds in debugfs.
    # Fault knobs (inject_*, debug kernels only) are documented with the
    # hostile-host tests instead.
    g = boot()
    load(g)
    dev = g.balloon_virtio_dev()
    files = set(g.run(f"ls /sys/kernel/debug/virtio_balloon_rs/{dev}").split())
    counters = {f for f in files if not f.startswith("inject_")}
    documented = readme_counters()
    assert counters == documented, (sorted(counters - documented), sorted(documented - counters))
    # The fault knobs (debug kernels) are documented with the hostile-host
    # tests.
    knobs = files - counters
    testing = (vm.ROOT / "docs/testing.md").read_text()
    assert all(f"`{k}`" in testing for k in knobs), knobs
    g.run("rmmod virtio_balloon_rs")


def test_a_counter_file_is_read_whole_or_not_at_all(boot):
    # One read from offset 0 gets the whole line and the next read is the
    # end of the file (dd reads until then), so a counter moving between two
    # reads cannot splice two values; a buffer too small for the line is
    # refused, not cut.
    g = boot(mem_mib=512)
    load(g)
    g.set_balloon_mib(64)
    assert g.wait_balloon(lambda s: s == 64) == 64
    f = f"/sys/kernel/debug/virtio_balloon_rs/{g.balloon_virtio_dev()}/actual_frames"
    frames = str(64 * vm.FRAMES_PER_MIB)
    assert g.run(f"dd if={f} bs=64 2>/dev/null").split() == [frames]
    rc, out = g.run_rc(f"dd if={f} bs={len(frames)} 2>&1 >/dev/null")
    assert rc != 0 and "Invalid argument" in out, out
    g.run("rmmod virtio_balloon_rs")


def test_each_work_item_and_completion_has_a_lockdep_class_of_its_own(boot):
    # Lockdep tells locks apart by class. Work items and completions get one
    # per place that creates them (as C's INIT_DELAYED_WORK and
    # init_completion do per expansion), named after it: one shared class
    # would make lockdep report false recursion and miss real inversions.
    # Debug kernel only (/proc/lockdep).
    g = boot(mem_mib=1024, balloon="guest-stats-polling-interval=1")
    if g.run_rc("[ -e /proc/lockdep ]")[0] != 0:
        pytest.skip("needs lockdep (the debug kernel: make check-debug)")
    load(g)
    g.set_balloon_mib(300)
    g.wait_balloon(lambda s: s == 300)
    g.wait_counters(lambda c: c["stats_sent"] >= 3)
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    classes = g.run("cat /proc/lockdep")
    names = ["Balloon::update_size", "Balloon::fill_ahead", "Balloon::free_deflated",
             "Balloon::stats_refresh", "virtio::queue::used"]
    missing = [n for n in names if f": {n}\n" not in classes]
    assert not missing, (missing, [l for l in classes.splitlines() if "Balloon" in l or "virtio" in l])
    g.run("rmmod virtio_balloon_rs")
