# SPDX-License-Identifier: GPL-2.0
"""Installing the driver as users do: `make install` and DKMS, against the
project's own guest kernel, which is an unpatched linux-source-6.12 built
in an O= build directory. Then a guest boots with the installed module tree
and loads the driver the way udev does, by the balloon device's alias, with
the in-tree C driver blacklisted."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import vm

DRV = "virtio_balloon_rs"
KMAKE = vm.kmake_vars()


def release(kdir):
    return (Path(kdir) / "include/config/kernel.release").read_text().strip()


def stage_kernel_modules(kdir, stage):
    """The kernel's own modules, installed under `stage` (as a distribution
    package would put them under /)."""
    r = subprocess.run(["make", "-s", "-C", str(kdir), *KMAKE, f"INSTALL_MOD_PATH={stage}",
                        "modules_install"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return Path(stage) / "lib/modules" / release(kdir)


def llvm_names(tmp_path, stage):
    """DKMS appends CC=clang LD=ld.lld for a kernel built with them; Debian
    installs them as clang-19 and ld.lld-19 only. Also a depmod that works on
    the staged tree, as dkms install runs `depmod -a RELEASE`, and the
    kernel's rustc as `rustc`."""
    d = tmp_path / "bin"
    d.mkdir()
    suffix = next((v.split("=", 1)[1] for v in KMAKE if v.startswith("LLVM=")), "")
    for name in ("clang", "ld.lld"):
        os.symlink(shutil.which(name + suffix) or shutil.which(name), d / name)
    # DKMS also runs the first rustc on PATH: the kernel's must be it.
    os.symlink(next(v.split("=", 1)[1] for v in KMAKE if v.startswith("RUSTC=")), d / "rustc")
    (d / "depmod").write_text(f'#!/bin/sh\nexec /sbin/depmod -b "{stage}" "$@"\n')
    (d / "depmod").chmod(0o755)
    return d


def test_make_install_installs_only_the_driver_and_runs_depmod(kdir, modules, tmp_path):
    r = subprocess.run(["make", "-s", "-C", str(vm.ROOT), f"KDIR={kdir}",
                        f"INSTALL_MOD_PATH={tmp_path}", "install"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    lib = tmp_path / "lib/modules" / release(kdir)
    installed = sorted(str(p.relative_to(lib)) for p in lib.rglob("*.ko*"))
    assert installed == [f"updates/{DRV}.ko"], installed
    assert f"updates/{DRV}.ko:" in (lib / "modules.dep").read_text()
    assert f" {DRV}\n" in (lib / "modules.alias").read_text()
    # The test modules were not part of it; the tree builds them again.
    subprocess.run([str(vm.ROOT / "scripts/build-module.sh"), str(kdir)], check=True,
                   stdout=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("dkms") is None, reason="needs dkms (scripts/deps.sh installs it)")
@pytest.mark.skipif(vm.ARCH != "x86_64",
                    reason="DKMS builds for the machine it runs on; arm64 guests are cross-built here")
def test_dkms_builds_installs_and_udev_style_modprobe_loads_it(kdir, modules, boot, tmp_path):
    assert (Path(kdir) / "source").is_symlink(), "the guest kernel should be an O= build tree"
    rel = release(kdir)
    stage = tmp_path / "root"
    lib = stage_kernel_modules(kdir, stage)
    assert (lib / "kernel/drivers/virtio/virtio_balloon.ko").exists()
    env = dict(os.environ, PATH=f"{llvm_names(tmp_path, stage)}:{os.environ['PATH']}")
    version = next(l.split("=", 1)[1].strip('"') for l in (vm.ROOT / "dkms.conf").read_text().splitlines()
                   if l.startswith("PACKAGE_VERSION="))
    src = vm.project_copy(tmp_path / "src" / f"{DRV}-{version}")
    trees = ["--dkmstree", str(tmp_path / "dkms"), "--sourcetree", str(src.parent),
             "--installtree", str(stage / "lib/modules")]
    (tmp_path / "dkms").mkdir()
    for step in (["add"], ["build", "-k", rel, "--kernelsourcedir", str(kdir)],
                 ["install", "-k", rel, "--kernelsourcedir", str(kdir)]):
        r = subprocess.run(["dkms", *step, "-m", DRV, "-v", version, *trees], env=env,
                           capture_output=True, text=True, timeout=900)
        log = r.stdout + r.stderr
        make_log = tmp_path / "dkms" / DRV / version / "build/make.log"
        if r.returncode != 0 and make_log.exists():
            log += make_log.read_text()[-4000:]
        assert r.returncode == 0, f"dkms {step[0]}: {log}"
    ko = [p for p in lib.rglob(f"{DRV}.ko*")]
    assert len(ko) == 1 and "updates" in str(ko[0]), ko
    assert f" {DRV}\n" in (lib / "modules.alias").read_text()
    # The C driver is blacklisted, as a user replacing it would.
    (stage / "etc/modprobe.d").mkdir(parents=True)
    (stage / "etc/modprobe.d/virtio_balloon_rs.conf").write_text("blacklist virtio_balloon\n")
    initramfs = vm.build_initramfs(kdir, tmp_path / "initramfs.cpio.gz", tree=stage)

    g = boot(initramfs=initramfs)
    # What udev does for each device that appears: modprobe its modalias.
    g.run(f"for a in $(cat /sys/bus/virtio/devices/*/modalias); do modprobe -b \"$a\"; done")
    mods = g.run("cat /proc/modules")
    assert DRV in mods and "virtio_balloon " not in mods, mods
    dev = g.balloon_virtio_dev()
    assert g.run(f"basename $(readlink /sys/bus/virtio/devices/{dev}/driver)").strip() == DRV
    g.set_balloon_mib(64)
    assert g.wait_balloon(lambda s: s == 64) == 64
    g.set_balloon_mib(0)
    assert g.wait_balloon(lambda s: s == 0) == 0
    g.run(f"modprobe -r {DRV}")
