# SPDX-License-Identifier: GPL-2.0
"""`make KDIR=...` with trees that cannot work: each gets a message that names
what is wrong and how to fix it, and no kbuild noise. Every broken tree
comes in two layouts: an in-tree build (the top Makefile is the kernel's)
and an O= build directory (its Makefile only includes the source tree's,
which is elsewhere), because the checks must only read what a build
produces. The project's own guest kernel is the good tree."""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import vm

# The build matrix's runner (tests/configs/run.py), for its check of one
# configuration.
_spec = importlib.util.spec_from_file_location("configs", vm.ROOT / "tests/configs/run.py")
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


def make_module(kdir, *args, root=vm.ROOT):
    return subprocess.run(["make", "-s", "-C", str(root), f"KDIR={kdir}", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def cloud_tree():
    """Debian's cloud-amd64 configuration with Rust on, made ready for
    external modules (scripts/kernel/config-tree.sh): what a cloud guest
    runs. It has no KUnit, and no Module.symvers."""
    return config_tree("debian-cloud-amd64")


def fake_tree(tmp_path, real, layout, drop=(), release=None, rustc=None, built=True,
              rust_built=True, bindgen_record=True):
    """A tree that looks built: .config (minus some options), the release,
    the Rust crate metadata, the record of the kernel's bindgen run and
    Module.symvers, as the real build made them."""
    tree = tmp_path / "tree"
    tree.mkdir()
    if layout == "in-tree":
        shutil.copy(real / "Makefile", tree / "Makefile")
    else:
        # What `make O=<dir>` writes into the build directory.
        (tree / "Makefile").write_text(f"# Automatically generated: don't edit\ninclude {real}/Makefile\n")
    lines = []
    for line in (real / ".config").read_text().splitlines():
        if any(line.startswith(f"{opt}=") for opt in drop):
            continue
        if rustc and line.startswith("CONFIG_RUSTC_VERSION_TEXT="):
            line = f'CONFIG_RUSTC_VERSION_TEXT="{rustc}"'
        lines.append(line)
    (tree / ".config").write_text("\n".join(lines) + "\n")
    if built:
        (tree / "include/config").mkdir(parents=True)
        rel = release or (real / "include/config/kernel.release").read_text()
        (tree / "include/config/kernel.release").write_text(rel)
    if rust_built:
        (tree / "rust").mkdir()
        shutil.copy(real / "rust/libkernel.rmeta", tree / "rust/libkernel.rmeta")
        (tree / "rust/bindings").mkdir()
        shutil.copy(real / "rust/bindings/bindings_generated.rs", tree / "rust/bindings")
        if bindgen_record:
            shutil.copy(real / "rust/bindings/.bindings_generated.rs.cmd", tree / "rust/bindings")
    shutil.copy(real / "Module.symvers", tree / "Module.symvers")
    return tree


CASES = [
    ("missing", "no such directory"),
    ("not-a-tree", "not a kernel build tree"),
    ("no-config", "not configured"),
    ("no-rust", "CONFIG_RUST is not set"),
    ("no-modules", "without module support"),
    ("no-virtio", "without CONFIG_VIRTIO"),
    ("not-built", "configured but not built"),
    ("wrong-version", "this driver targets 6.12"),
    ("rust-not-built", "Rust support of the tree is not built"),
    ("other-rustc", "built with 'rustc 1.78.0 (imaginary)', but this build would use"),
    ("no-bindgen-record", "no record of how its Rust bindings were generated"),
]


@pytest.mark.parametrize("layout", ["in-tree", "O="])
@pytest.mark.parametrize("case,expect", CASES)
def test_bad_kdir_is_named(kdir, tmp_path, layout, case, expect):
    if case == "missing":
        tree = tmp_path / "nope"
    elif case == "not-a-tree":
        tree = tmp_path
    elif case == "no-config":
        tree = tmp_path / "t"
        tree.mkdir()
        shutil.copy(kdir / "Makefile", tree / "Makefile")
    elif case == "no-rust":
        tree = fake_tree(tmp_path, kdir, layout, drop=("CONFIG_RUST",))
    elif case == "no-modules":
        tree = fake_tree(tmp_path, kdir, layout, drop=("CONFIG_MODULES",))
    elif case == "no-virtio":
        tree = fake_tree(tmp_path, kdir, layout, drop=("CONFIG_VIRTIO",))
    elif case == "not-built":
        tree = fake_tree(tmp_path, kdir, layout, built=False)
    elif case == "wrong-version":
        tree = fake_tree(tmp_path, kdir, layout, release="6.6.63\n")
    elif case == "rust-not-built":
        tree = fake_tree(tmp_path, kdir, layout, rust_built=False)
    elif case == "other-rustc":
        tree = fake_tree(tmp_path, kdir, layout, rustc="rustc 1.78.0 (imaginary)")
    else:
        tree = fake_tree(tmp_path, kdir, layout, bindgen_record=False)
    r = make_module(tree)
    assert r.returncode != 0
    assert f"KDIR={tree}" in r.stderr and expect in r.stderr, r.stderr
    # Our check speaks before kbuild does.
    assert "rustc" not in r.stderr.replace(expect, "") or case == "other-rustc", r.stderr
    assert "No rule to make target" not in r.stderr, r.stderr


def test_good_kdir_builds(kdir):
    # The project's own guest kernel, handed over as a user would.
    r = make_module(kdir)
    assert r.returncode == 0, r.stderr
    assert (vm.ROOT / "virtio_balloon_rs.ko").exists()


def test_modinfo_documents_the_parameters(kdir):
    # What `modinfo` shows users: each parameter, its type and its default,
    # and the default it names is the one the module starts with (the
    # deflate-on-OOM test reads it back from sysfs).
    r = make_module(kdir)
    assert r.returncode == 0, r.stderr
    out = subprocess.run(["modinfo", "-F", "parm", str(vm.ROOT / "virtio_balloon_rs.ko")],
                         capture_output=True, text=True, check=True).stdout
    parms = dict(l.split(":", 1) for l in out.splitlines())
    assert set(parms) == {"oom_deflate_max_mib", "oom_quiet_ms", "floor_mib", "stats_tags",
                          "protect_working_set"}, parms
    assert "(default 64; 1 to 1024)" in parms["oom_deflate_max_mib"]
    assert "1 keeps the C driver's fixed 1 MiB" in parms["oom_deflate_max_mib"]
    assert "(default 1000; 1 to 60000)" in parms["oom_quiet_ms"]
    assert "(default 0; 0 to 16777216). 0 is automatic: 1/32 of RAM" in parms["floor_mib"]
    assert "(default 16; 10 to 16). 16 sends all, as the C driver" in parms["stats_tags"]
    assert "(default 0; 0 to 1). 1 holds" in parms["protect_working_set"]
    assert all(p.endswith("(uint)") for p in parms.values()), parms
    logic = (vm.ROOT / "logic/oom.rs").read_text()
    assert "DEFAULT_MAX_MIB: u32 = 64;" in logic and "LIMIT_MAX_MIB: u32 = 1024;" in logic
    assert "DEFAULT_QUIET_MS: u32 = 1000;" in logic and "LIMIT_QUIET_MS: u32 = 60_000;" in logic
    floor = (vm.ROOT / "logic/floor.rs").read_text()
    assert "DEFAULT_MIB: u32 = 0;" in floor and "LIMIT_MIB: u32 = 1 << 24;" in floor
    # The README's table names exactly these parameters, with the same
    # defaults and ranges.
    table = (vm.ROOT / "README.md").read_text().split("### Module parameters", 1)[1].split("\n#", 1)[0]
    rows = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    assert set(rows) == set(parms), (rows, parms)
    for name, (default, limits) in rows.items():
        low, high = limits.split(" to ")
        assert f"(default {default}; {low} to {high})" in parms[name], (name, rows[name], parms[name])


def test_c_flags_that_change_layouts_stop_the_build(kdir, tmp_path):
    # bindgen must see the C code the way the compiler does: a macro the
    # module's C helpers are compiled with but the kernel's bindgen run did
    # not have (here from KCFLAGS) could change struct layouts, so the
    # build stops before any Rust is generated. A copy of the project keeps
    # the tree's own objects.
    src = vm.project_copy(tmp_path / "src")
    kvars = vm.kmake_vars()
    r = subprocess.run(["make", "-C", str(kdir), f"M={src}", *kvars, "VBRS_DRIVER_ONLY=1", "modules"],
                       env=dict(os.environ, KCFLAGS="-DVBRS_LAYOUT_PROBE=1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "the C flags differ" in r.stderr, r.stderr
    assert "module C code only:  -DVBRS_LAYOUT_PROBE=1" in r.stderr, r.stderr
    assert not (src / "kapi/bindings_generated.rs").exists()
    assert not (src / "virtio_balloon_rs.ko").exists()


def test_another_rustc_stops_a_direct_kbuild_build(kdir, tmp_path):
    # DKMS and `make -C KDIR M=...` bypass the KDIR checks of make: the
    # build itself must name a rustc that is not the kernel's, before
    # rustc's own "incompatible version" errors.
    src = vm.project_copy(tmp_path / "src")
    fake = tmp_path / "rustc"
    fake.write_text('#!/bin/sh\necho "rustc 1.78.0 (imaginary)"\n')
    fake.chmod(0o755)
    kvars = [v for v in vm.kmake_vars() if not v.startswith("RUSTC=")]
    r = subprocess.run(["make", "-C", str(kdir), f"M={src}", *kvars, f"RUSTC={fake}",
                        "VBRS_DRIVER_ONLY=1", "modules"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert f"but RUSTC={fake} is 'rustc 1.78.0 (imaginary)'" in r.stderr, r.stderr
    assert "E0514" not in r.stderr and "incompatible version" not in r.stderr, r.stderr


def config_tree(name):
    out = subprocess.run([str(vm.ROOT / "scripts/kernel/config-tree.sh"), name],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["debian-cloud-amd64", "small-x86_64", "micro-x86_64"])
def test_builds_against_a_configuration_of_the_matrix(name, tmp_path):
    # The configurations of the matrix (make check-configs has them all)
    # that make check builds against: what cloud guests run (no KUnit), a
    # small one where no header pulls in another's declarations by chance,
    # and a microVM's (no PCI, no ACPI, no system sleep: what only freeze
    # and restore use is dead there, and the kernel crate's bindings lack
    # what is inline without PM_SLEEP). The driver builds warning-free; the
    # KUnit module builds, or is skipped with one line saying why; the
    # compile-fail control case builds.
    ok, line = configs.check(name, "x86_64", config_tree(name), tmp_path)
    print(line)
    assert ok, line


def test_kunit_needs_a_tree_with_kunit(cloud_tree, tmp_path):
    # `make kunit` against a tree without KUnit stops before building, in
    # one line of its own.
    src = vm.project_copy(tmp_path / "src")
    r = make_module(cloud_tree, "KBUILD_MODPOST_WARN=1", "kunit", root=src)
    assert r.returncode != 0
    ours = [l for l in r.stderr.splitlines() if "error:" in l]
    assert len(ours) == 1, r.stderr
    assert f"KDIR={cloud_tree} has no CONFIG_KUNIT" in ours[0], r.stderr
    assert "KUnit module (kunit/virtio_balloon_rs_kunit.ko) cannot be built" in ours[0], r.stderr
    assert "rustc" not in r.stderr and "Entering directory" not in r.stdout + r.stderr, r.stderr
    assert not (src / "virtio_balloon_rs.ko").exists()


def test_a_tree_without_module_symvers_needs_modpost_warn(cloud_tree, tmp_path):
    # A modules_prepare tree has no Module.symvers, so modpost cannot check
    # the module's symbols: refused, with the way out named, unless asked.
    r = make_module(cloud_tree)
    assert r.returncode != 0
    assert f"KDIR={cloud_tree}: no Module.symvers" in r.stderr, r.stderr
    assert "KBUILD_MODPOST_WARN=1" in r.stderr, r.stderr


def test_the_tree_architecture_is_taken_or_checked(kdir, tmp_path):
    # Without ARCH the build takes the tree's (the matrix builds the arm64
    # trees that way); an ARCH that is not the tree's is named before
    # kbuild's own errors, and so is an architecture the driver is not
    # built for.
    r = make_module(kdir, "ARCH=arm64")
    assert r.returncode != 0
    assert f"KDIR={kdir}: an x86_64 kernel, but ARCH=arm64; pass ARCH=x86_64, or no ARCH" in r.stderr, r.stderr
    tree = fake_tree(tmp_path, kdir, "O=", drop=("CONFIG_X86_64",))
    r = make_module(tree)
    assert r.returncode != 0
    assert "an architecture this driver is not built for (supported: x86_64, arm64)" in r.stderr, r.stderr
