#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The build matrix: the module must compile against kernels configured
the way users' kernels are, not only against the project's guest kernels.

usage: run.py [NAME ...]    (default: every configuration that
                             scripts/kernel/config-tree.sh --list names)

For each configuration, scripts/kernel/config-tree.sh prepares (once,
cached) a tree made ready for external modules only (`make
modules_prepare`: the kernel's Rust crates, no vmlinux, so no
Module.symvers). Against each, from a copy of the project:
  * `make KDIR=<tree> KBUILD_MODPOST_WARN=1`, the user's own entry point
    with modpost's checks of undefined symbols as warnings (the tree has no
    Module.symvers to check them against), and no ARCH: the build takes the
    tree's. It must not warn. The driver must build, and so
    must the KUnit module where the tree has CONFIG_KUNIT=y; where it does
    not, the build must say in one line that the KUnit module is skipped,
    and build no KUnit module;
  * the compile-fail suite's control case (tests/compile_fail/ok_driver.rs),
    a small driver that uses kapi as intended, must build.
A failure names the configuration and the first compiler error.

Trees are prepared one at a time (a kernel build uses every core); the
module builds then run two at a time."""

import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import vm  # noqa: E402

# The compile-fail runner, for its control case.
_spec = importlib.util.spec_from_file_location("compile_fail", HERE.parent / "compile_fail/run.py")
compile_fail = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_fail)

CONFIG_TREE = vm.ROOT / "scripts/kernel/config-tree.sh"
KUNIT_SKIP = "the KUnit module is skipped"
WARNING_RE = re.compile(r"^(?:warning: .*|.*: warning: .*)$", re.M)
ERROR_RE = re.compile(r"^(?:.*\berror\b(?:\[E\d{4}\])?:.*|.*\*\*\* .*|virtio_balloon_rs: .*)$", re.M)


def configurations():
    out = subprocess.run([str(CONFIG_TREE), "--list"], check=True, capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def first_error(log):
    m = ERROR_RE.search(log)
    return m.group(0).strip() if m else (log.strip().splitlines() or ["(no output)"])[-1]


def kmake_vars(arch):
    return subprocess.run(["bash", "-c", f". {vm.ROOT}/scripts/lib.sh && vbrs_kmake_vars"],
                          env=dict(os.environ, VBRS_ARCH=arch, VBRS_PAGE="4k"),
                          check=True, capture_output=True, text=True).stdout.split()


def check(name, arch, tree, workdir):
    """Builds the modules and the control case against one tree; returns
    (ok, report line)."""
    env = dict(os.environ, VBRS_ARCH=arch, VBRS_PAGE="4k")
    src = vm.project_copy(Path(workdir) / name / "src")
    r = subprocess.run(["make", "-s", "-C", str(src), f"KDIR={tree}", "KBUILD_MODPOST_WARN=1"],
                       env=env, capture_output=True, text=True, timeout=1800)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        return False, f"FAIL  {name} ({arch}): the module does not build: {first_error(log)}"
    # Warning-free against every configuration, as against the guest
    # kernels (modpost's own "WARNING:" lines about the symbols it cannot
    # check are expected without Module.symvers).
    warnings = WARNING_RE.findall(log)
    if warnings:
        return False, f"FAIL  {name} ({arch}): the build warns: {warnings[0].strip()}"
    if not (src / "virtio_balloon_rs.ko").exists():
        return False, f"FAIL  {name} ({arch}): make succeeded but built no virtio_balloon_rs.ko"
    has_kunit = "CONFIG_KUNIT=y" in (Path(tree) / ".config").read_text().splitlines()
    kunit_ko = (src / "kunit/virtio_balloon_rs_kunit.ko").exists()
    skips = [line for line in log.splitlines() if KUNIT_SKIP in line]
    if has_kunit and not kunit_ko:
        return False, f"FAIL  {name} ({arch}): CONFIG_KUNIT=y, but no KUnit module was built"
    if not has_kunit and (kunit_ko or len(skips) != 1):
        return False, (f"FAIL  {name} ({arch}): no CONFIG_KUNIT=y, so the build must skip the KUnit "
                       f"module and say so in one line; said {len(skips)} such lines:\n{log[-2000:]}")
    # With the copy's kapi: its bindings were just generated against this
    # tree (the repository's are those of its last build, another tree's).
    control = compile_fail.HERE / "ok_driver.rs"
    ok, line = compile_fail.run_case(control, tree, kmake_vars(arch), Path(workdir) / name,
                                     extra=["KBUILD_MODPOST_WARN=1"], repo=src)
    if not ok:
        return False, f"FAIL  {name} ({arch}): the compile-fail control case does not build: {first_error(line)}"
    what = "driver, KUnit module" if has_kunit else "driver (KUnit module skipped: no CONFIG_KUNIT)"
    return True, f"ok    {name} ({arch}): {what}, control case"


def main():
    known = configurations()
    names = sys.argv[1:] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown configuration(s) {', '.join(unknown)}: known are {', '.join(known)}", file=sys.stderr)
        return 2
    trees, results = {}, []
    for name in names:
        r = subprocess.run([str(CONFIG_TREE), name], stdout=subprocess.PIPE, text=True)
        if r.returncode != 0:
            results.append((False, f"FAIL  {name} ({known[name]}): the tree could not be prepared (see above)"))
        else:
            trees[name] = Path(r.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="vbrs-configs-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results += list(pool.map(lambda n: check(n, known[n], trees[n], tmp), trees))
    for _, line in results:
        print(line)
    failed = sum(1 for ok, _ in results if not ok)
    print(f"configurations: {len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
