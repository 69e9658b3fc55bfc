# SPDX-License-Identifier: GPL-2.0
"""`make KDIR=...` with trees that cannot work: each gets a message that names
what is wrong and how to fix it, and no kbuild noise."""

import shutil
import subprocess

import pytest

import vm


def make_module(kdir):
    return subprocess.run(["make", "-s", "-C", str(vm.ROOT), f"KDIR={kdir}"],
                          capture_output=True, text=True, timeout=120)


def fake_tree(tmp_path, real, drop=(), helpers=True):
    """A tree with the real top Makefile and .config minus some options."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(real / "Makefile", tree / "Makefile")
    lines = [line for line in (real / ".config").read_text().splitlines()
             if not any(line.startswith(f"{opt}=") for opt in drop)]
    (tree / ".config").write_text("\n".join(lines) + "\n")
    if helpers:
        (tree / "rust/helpers").mkdir(parents=True)
        (tree / "rust/helpers/virtio.c").write_text("/* unpatched */\n")
    return tree


@pytest.mark.parametrize("case,expect", [
    ("missing", "no such directory"),
    ("not-a-tree", "not a kernel build tree"),
    ("no-config", "not configured"),
    ("no-rust", "CONFIG_RUST is not set"),
    ("no-modules", "without module support"),
    ("no-virtio", "without CONFIG_VIRTIO"),
    ("unpatched", "apply scripts/kernel/patches"),
    ("wrong-version", "this driver targets 6.12"),
])
def test_bad_kdir_is_named(kdir, tmp_path, case, expect):
    if case == "missing":
        tree = tmp_path / "nope"
    elif case == "not-a-tree":
        tree = tmp_path
    elif case == "no-config":
        tree = tmp_path / "t"
        tree.mkdir()
        shutil.copy(kdir / "Makefile", tree / "Makefile")
    elif case == "no-rust":
        tree = fake_tree(tmp_path, kdir, drop=("CONFIG_RUST",))
    elif case == "no-modules":
        tree = fake_tree(tmp_path, kdir, drop=("CONFIG_MODULES",))
    elif case == "no-virtio":
        tree = fake_tree(tmp_path, kdir, drop=("CONFIG_VIRTIO",))
    elif case == "wrong-version":
        tree = fake_tree(tmp_path, kdir)
        mk = tree / "Makefile"
        mk.write_text(mk.read_text().replace("PATCHLEVEL = 12", "PATCHLEVEL = 6", 1))
    else:
        tree = fake_tree(tmp_path, kdir)
    r = make_module(tree)
    assert r.returncode != 0
    assert f"KDIR={tree}" in r.stderr and expect in r.stderr, r.stderr
    # Our check speaks before kbuild does.
    assert "rustc" not in r.stderr and "No rule to make target" not in r.stderr, r.stderr
