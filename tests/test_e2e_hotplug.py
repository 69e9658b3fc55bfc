# SPDX-License-Identifier: GPL-2.0
"""End-to-end: the balloon device unplugged and plugged again with pages
inflated (PCI hot-plug), and a DIMM unplugged from under the balloon's
pages, which offlining migrates across zones: the managed page count of
every zone, and MemTotal, must come out exact, with this driver as with the
in-tree C driver. (On x86_64 boot memory cannot be offlined whole either:
its last block holds the firmware's tables.)"""

import re

import pytest

import vm
from vm import PAGES_PER_MIB

MIB = 1024 * 1024


def zones(g):
    """Managed pages per zone ("DMA", "Normal", "Movable", ...) of node 0."""
    out = g.run("cat /proc/zoneinfo")
    managed = {}
    for block in re.split(r"^Node \d+, zone\s+", out, flags=re.M)[1:]:
        name = block.split()[0]
        m = re.search(r"^\s+managed\s+(\d+)", block, re.M)
        managed[name] = int(m.group(1)) if m else 0
    return managed


def qemu_has(g, dev_id):
    return any(p["name"] == dev_id for p in g.qmp.cmd("qom-list", path="/machine/peripheral"))


def wait_unplugged(g, dev_id, timeout):
    g.wait(lambda: qemu_has(g, dev_id), lambda has: not has, timeout, 0.2,
                  f"{dev_id} to be unplugged")


def has_balloon(g):
    return g.run_rc("grep -lq 0x0005 /sys/bus/virtio/devices/*/device")[0] == 0


# -- PCI hot-unplug and re-plug ----------------------------------------------

# The C driver's runs are the reference; on the debug kernel only this
# driver's are of interest.
MODULES = ["virtio_balloon_rs"] + ([] if vm.DEBUG else ["virtio_balloon"])


@pytest.mark.parametrize("module", MODULES)
def test_balloon_device_unplugged_with_pages_inflated_and_plugged_again(boot, module):
    # x86_64: the pc machine's ACPI hot-plug on the root bus; arm64: a PCIe
    # root port (pciehp, which waits 5 s after the attention button before
    # it removes the device).
    root_port = []
    if vm.ARCH == "arm64":
        root_port = ["-device", "pcie-root-port,id=rp1,chassis=1,slot=1"]
    g = boot(mem_mib=1024, balloon="bus=rp1" if root_port else "", qemu_args_before=root_port)
    total0 = g.meminfo()["MemTotal"]
    vm0 = g.vmstat()
    g.run(f"insmod /modules/{module}.ko")
    g.set_balloon_mib(300)
    assert g.wait_balloon(lambda s: s == 300) == 300
    assert g.meminfo()["MemTotal"] == total0 - 300 * 1024
    g.qmp.cmd("device_del", id="balloon0")
    wait_unplugged(g, "balloon0", 120 if vm.DEBUG else 60)
    # The driver's remove gave every page back before the device went.
    g.wait(lambda: has_balloon(g), lambda has: not has, 30, 0.2, "the guest to drop the device")
    assert g.meminfo()["MemTotal"] == total0
    inflated, deflated = g.balloon_moved_since(vm0)
    assert inflated == deflated == 300 * PAGES_PER_MIB
    if module == "virtio_balloon_rs":
        assert f"unbound; {300 * PAGES_PER_MIB} pages given back" in g.console_text()
    # Plugged again: the loaded driver binds the new device and follows its
    # target.
    args = {"bus": "rp1"} if root_port else {}
    g.qmp.cmd("device_add", driver="virtio-balloon-pci", id="balloon0", **args)
    g.wait(lambda: has_balloon(g), bool, 60, 0.2, "the guest to find the new device")
    dev = g.balloon_virtio_dev()
    g.wait(lambda: g.run(f"readlink /sys/bus/virtio/devices/{dev}/driver || true"),
                  lambda out: out.strip().endswith("/" + module), 30, 0.2, "the driver to bind")
    g.set_balloon_mib(200)
    assert g.wait_balloon(lambda s: s == 200) == 200
    assert g.meminfo()["MemTotal"] == total0 - 200 * 1024
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    g.run(f"rmmod {module}")
    assert g.meminfo()["MemTotal"] == total0
    inflated, deflated = g.balloon_moved_since(vm0)
    assert inflated == deflated == 500 * PAGES_PER_MIB


# -- DIMM hot-unplug -----------------------------------------------------------

@pytest.mark.skipif(vm.ARCH != "x86_64", reason="DIMM hot-plug on arm64 virt needs ACPI firmware "
                    "(UEFI), and arm64 refuses to offline boot memory")
@pytest.mark.parametrize("module", MODULES)
def test_dimm_unplugged_from_under_the_balloon(boot, module):
    # A 1 GiB DIMM plugged in at run time and onlined movable; the balloon's
    # first pages land there. Unplugging the DIMM (ACPI eject) offlines it,
    # migrating them into the guest's own memory, and removes it.
    g = boot(mem_mib=2048, mem_opts="slots=2,maxmem=4G",
             extra_append="memhp_default_state=online_movable")
    total_boot = g.meminfo()["MemTotal"]
    g.qmp.cmd("object-add", **{"qom-type": "memory-backend-ram", "id": "mem1", "size": 1024 * MIB})
    g.qmp.cmd("device_add", driver="pc-dimm", id="dimm1", memdev="mem1")
    # QEMU's balloon target and `actual` count the DIMM's RAM too.
    g.mem_mib += 1024
    g.wait(lambda: g.meminfo()["MemTotal"], lambda t: t == total_boot + 1024 * 1024, 60, 0.2,
                  "the DIMM to be onlined")
    z0 = zones(g)
    g.run(f"insmod /modules/{module}.ko")
    g.set_balloon_mib(600)
    assert g.wait_balloon(lambda s: s == 600) == 600
    z1 = zones(g)
    in_dimm = z0["Movable"] - z1["Movable"]
    assert in_dimm > 500 * PAGES_PER_MIB, (z0, z1)
    vm0 = g.vmstat()
    g.qmp.cmd("device_del", id="dimm1")
    wait_unplugged(g, "dimm1", 600 if vm.DEBUG else 180)
    g.mem_mib -= 1024
    z2 = zones(g)
    migrated = g.vmstat()["balloon_migrate"] - vm0["balloon_migrate"]
    print(f"{module}: {in_dimm // PAGES_PER_MIB} MiB of the balloon on the DIMM, "
          f"{migrated // PAGES_PER_MIB} MiB migrated off it; zones {z0} -> {z2}")
    assert migrated >= in_dimm
    assert z2["Movable"] == 0, z2
    others = {k: v for k, v in z0.items() if k != "Movable"}
    assert sum(z2[k] for k in others) == sum(others.values()) - 600 * PAGES_PER_MIB, (z0, z2)
    assert g.meminfo()["MemTotal"] == total_boot - 600 * 1024
    g.set_balloon_mib(0)
    g.wait_balloon(lambda s: s == 0)
    assert g.meminfo()["MemTotal"] == total_boot
    assert {k: v for k, v in zones(g).items() if k != "Movable"} == others
    g.run(f"rmmod {module}")
