# SPDX-License-Identifier: GPL-2.0
"""Fixtures for the end-to-end tests: the guest kernel, the modules, an
initramfs and QEMU guests that are always torn down and checked for splats."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vm  # noqa: E402

# Every test has a time limit, its teardown (the guests' checks) included:
# `@pytest.mark.time_limit(seconds, debug=seconds)` sets it, else these.
# They are about three times what the test takes here, so that a hang
# fails the test in minutes instead of leaving it to CI's time-out.
TIME_LIMIT = 300
DEBUG_TIME_LIMIT = 1200


class TimeLimit(Exception):
    """A test ran out of its time: the message holds what its guests'
    kernels said of their blocked tasks and CPUs."""


def pytest_configure(config):
    config.addinivalue_line("markers", "time_limit(seconds, debug=seconds): the test's time limit, "
                            "on the guest kernel and on the debug kernel")
    config.addinivalue_line("markers", "not_debug: the debug kernel would only repeat what the "
                            "guest kernel's run shows (no locking, allocation or lifetime path "
                            "of its own)")


def pytest_collection_modifyitems(config, items):
    if not vm.DEBUG:
        return
    for item in items:
        if item.get_closest_marker("not_debug"):
            item.add_marker(pytest.mark.skip(reason="checked on the guest kernel (make check); "
                                             "nothing here for KASAN, lockdep or kmemleak"))


@pytest.fixture(autouse=True)
def time_limit(request):
    """Fails the test when it runs past its limit; before its guests are
    stopped, each dumps its blocked tasks and every CPU's stack (sysrq w
    and l) into the failure message."""
    mark = request.node.get_closest_marker("time_limit")
    if vm.DEBUG:
        limit = (mark.kwargs.get("debug") or mark.args[0] * 4) if mark else DEBUG_TIME_LIMIT
    else:
        limit = mark.args[0] if mark else TIME_LIMIT

    def expired(signum, frame):
        dumps = [g.hang_report() for g in list(vm.Guest.running)]
        raise TimeLimit(f"{request.node.nodeid} ran past its time limit of {limit} s\n"
                        + ("\n".join(dumps) if dumps else "(no guest was running)"))

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(limit))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


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
