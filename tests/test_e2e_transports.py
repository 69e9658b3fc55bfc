# SPDX-License-Identifier: GPL-2.0
"""End-to-end over the other ways a host attaches the balloon: the
virtio-mmio transport (Firecracker's default: QEMU's microvm machine on
x86_64, virt's own virtio-mmio slots on arm64), the legacy (pre-1.0) PCI
interface, and packed rings. On each, this driver and the in-tree C driver
are driven the same way in the same guest: both must negotiate the same
features, reach the host's target exactly and give every page back."""

import pytest

import vm
from vm import FRAMES_PER_MIB, PAGES_PER_MIB

CASES = {
    # transport, device properties
    "mmio": ("mmio", ""),
    "legacy": ("pci", "disable-modern=on,disable-legacy=off"),
    "packed": ("pci", "packed=on"),
}


def drive(g, module, mib):
    """Loads `module`, inflates to `mib` MiB and back, unloads it; returns
    (the features the guest accepted, as QEMU saw them, and the transport's
    name for them in sysfs)."""
    total0 = g.meminfo()["MemTotal"]
    vm0 = g.vmstat()
    g.run(f"insmod /modules/{module}.ko")
    dev = g.balloon_virtio_dev()
    assert g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip() == module
    accepted = g.virtio_status()["guest-features"]
    g.set_balloon_mib(mib)
    assert g.wait_balloon(lambda s: s == mib) == mib
    assert g.meminfo()["MemTotal"] == total0 - mib * 1024
    g.set_balloon_mib(0)
    assert g.wait_balloon(lambda s: s == 0) == 0
    assert g.meminfo()["MemTotal"] == total0
    inflated, deflated = g.balloon_moved_since(vm0)
    assert inflated == deflated == mib * PAGES_PER_MIB
    g.run(f"rmmod {module}")
    return accepted


# Not on the debug kernel: the driver's code is the same on every transport
# and ring (the virtio core's differs, which is not what the debug run is
# for), and the C driver's runs are the reference.
@pytest.mark.not_debug
@pytest.mark.parametrize("case", sorted(CASES))
def test_other_transports_and_rings_match_the_c_driver(boot, case):
    transport, props = CASES[case]
    g = boot(mem_mib=1024, transport=transport, balloon=props)
    status = g.virtio_status()
    if case == "legacy":
        assert "VIRTIO_F_VERSION_1" not in " ".join(status["host-features"]["transports"])
    if case == "packed":
        assert "VIRTIO_F_RING_PACKED" in " ".join(status["host-features"]["transports"])
    ours = drive(g, "virtio_balloon_rs", 300)
    # The same features as the C driver, device and transport bits alike
    # (the packed ring and VERSION_1 where offered).
    theirs = drive(g, "virtio_balloon", 300)
    assert ours == theirs, (ours, theirs)
    if case == "packed":
        assert "VIRTIO_F_RING_PACKED" in " ".join(ours["transports"])
    if case == "legacy":
        assert "VIRTIO_F_VERSION_1" not in " ".join(ours["transports"])
    if case == "mmio":
        # The balloon sits on a virtio-mmio transport (the platform
        # driver's name), not on PCI.
        dev = g.balloon_virtio_dev()
        parent = g.run(f"basename $(readlink -f /sys/bus/virtio/devices/{dev}/../driver)").strip()
        assert parent == "virtio-mmio", parent
    # Exact to the frame on this transport too.
    g.run("insmod /modules/virtio_balloon_rs.ko")
    g.qmp.cmd("balloon", value=(g.mem_mib - 100) * g.MIB - 1001 * 4096)
    want = 100 + vm.whole_pages(1001) / FRAMES_PER_MIB
    assert g.wait_balloon(lambda s: s == want) == want
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    g.run("rmmod virtio_balloon_rs")
