#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Runs the KUnit suite in a booted guest and parses its KTAP with the
kernel tree's tools/testing/kunit/kunit.py. Fails on a failed case, a crash,
or a missing suite."""

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vm  # noqa: E402

SUITE = "virtio_balloon_rs"


def main():
    kdir = Path(sys.argv[1]) if len(sys.argv) > 1 else vm.kernel_dir()
    with tempfile.TemporaryDirectory(prefix="vbrs-kunit-") as tmp:
        initrd = vm.build_initramfs(kdir, Path(tmp) / "initramfs.cpio.gz")
        accel = "kvm" if vm.kvm_usable(kdir, initrd) else "tcg"
        with vm.Guest(kdir, initrd, balloon=None, accel=accel, workdir=Path(tmp) / "g") as g:
            g.run("dmesg -c > /dev/null")
            g.run("insmod /modules/virtio_balloon_rs_kunit.ko")
            ktap = g.run("dmesg")
            rc, results = g.run_rc(f"cat /sys/kernel/debug/kunit/{SUITE}/results")
            splats = g.splats()
    if rc != 0:
        print(f"KUnit suite {SUITE} did not register (no debugfs results)", file=sys.stderr)
        print(ktap, file=sys.stderr)
        return 1
    if f"# Subtest: {SUITE}" not in ktap:
        print(f"KUnit suite {SUITE} did not run", file=sys.stderr)
        print(ktap, file=sys.stderr)
        return 1
    parse = subprocess.run([sys.executable, str(vm.kernel_source(kdir) / "tools/testing/kunit/kunit.py"), "parse"],
                           input=ktap, text=True)
    if splats:
        print("guest console shows:\n" + "\n".join(splats), file=sys.stderr)
        return 1
    return parse.returncode


if __name__ == "__main__":
    sys.exit(main())
