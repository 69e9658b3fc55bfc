# SPDX-License-Identifier: GPL-2.0
"""Fixtures for the end-to-end tests: the guest kernel, the modules, an
initramfs and QEMU guests that are always torn down and checked for splats."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vm  # noqa: E402


@pytest.fixture(scope="session")
def kdir():
    return vm.kernel_dir()


@pytest.fixture(scope="session")
def modules(kdir):
    """Builds the modules against the guest kernel (a no-op when current)."""
    subprocess.run([str(vm.ROOT / "scripts/build-module.sh"), str(kdir)], check=True,
                   stdout=subprocess.DEVNULL)
    ko = vm.ROOT / "virtio_balloon_rs.ko"
    assert ko.exists()
    return ko


@pytest.fixture(scope="session")
def initrd(kdir, modules, tmp_path_factory):
    return vm.build_initramfs(kdir, tmp_path_factory.mktemp("initrd") / "initramfs.cpio.gz")


@pytest.fixture(scope="session")
def accel(kdir, initrd):
    return "kvm" if vm.kvm_usable(kdir, initrd) else "tcg"


@pytest.fixture
def boot(kdir, initrd, accel, tmp_path, request):
    """boot(balloon="deflate-on-oom=on", mem_mib=...) -> a started Guest
    (initramfs=: another image than the session's).
    Every guest is stopped after the test, and its console must be clean
    (and, on the debug kernel, kmemleak must find nothing). A boot that had
    to be retried is reported as a warning naming the test."""
    guests = []

    def _boot(balloon="", initramfs=None, **kw):
        g = vm.Guest(kdir, initramfs or initrd, balloon=balloon, accel=accel,
                     workdir=tmp_path / f"guest{len(guests)}", **kw)
        guests.append(g)
        return g.start()

    yield _boot
    # Ask every guest first, stop them all, and only then judge: a failed
    # check must not leave QEMU running.
    leaks = {}
    try:
        if os.environ.get("VBRS_DEBUG_KERNEL"):
            leaks = {g: g.kmemleak_reports() for g in guests}
    finally:
        for g in guests:
            g.stop()
    problems = []
    for g in guests:
        if g.retries:
            warnings.warn(f"{request.node.nodeid}: guest {g.dir} needed {len(g.retries)} "
                          f"boot retr{'y' if len(g.retries) == 1 else 'ies'}: {'; '.join(g.retries)}")
        if leaks.get(g):
            problems.append("kmemleak in %s:\n%s" % (g.dir, leaks[g]))
        splats = g.splats()
        if splats:
            problems.append("console of %s shows:\n%s" % (g.dir, "\n".join(splats)))
    assert not problems, "\n".join(problems)
