#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The compile-fail suite: each tests/compile_fail/*.rs uses kapi the wrong
way and must not build, failing with the errors its `// expect:` lines
name, reported in the case file itself (an error inside kapi does not
count). `// expect-ok` cases are controls that must build.

Each case becomes a kernel module of its own, built against the guest
kernel the way the driver is: its crate root mounts the project's kapi
tree (`#[path]`), so the cases see exactly what the driver sees."""

import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import vm  # noqa: E402

HERE = Path(__file__).resolve().parent

ROOT_RS = """// SPDX-License-Identifier: GPL-2.0
//! Crate root of compile-fail case {name} (tests/compile_fail/run.py).
#![allow(dead_code, unused_imports, unused_macros)]

#[macro_use]
#[path = "{repo}/kapi/mod.rs"]
mod kapi;

use kernel::prelude::*;

module! {{
    type: Case,
    name: "vbrs_compile_fail",
    license: "GPL",
}}

struct Case;

impl kernel::Module for Case {{
    fn init(_module: &'static ThisModule) -> Result<Self> {{
        Ok(Case)
    }}
}}

#[path = "{case}"]
mod case;
"""


def run_case(case, kdir, kvars, workdir, extra=(), repo=vm.ROOT):
    """Builds `case` against `kdir` with the kapi of `repo`, whose
    generated bindings (kapi/bindings_generated.rs) must be those of a
    build against `kdir`: they differ between configurations."""
    text = case.read_text()
    expects = re.findall(r"^// expect: (.+)$", text, re.M)
    want_ok = re.search(r"^// expect-ok$", text, re.M) is not None
    what = " ".join(l[4:] for l in text.splitlines() if l.startswith("//! ")) or case.stem
    d = Path(workdir) / case.stem
    d.mkdir(parents=True)
    # Composite, as the driver is: the crate and the C helpers kapi calls.
    (d / "Kbuild").write_text("obj-m := vbrs_cf.o\nvbrs_cf-y := cf.o helpers.o\n")
    (d / "helpers.c").write_text(f'#include "{repo}/kapi/helpers.c"\n')
    (d / "cf.rs").write_text(ROOT_RS.format(name=case.stem, repo=repo, case=case))
    r = subprocess.run(["make", "-C", str(kdir), f"M={d}", *kvars, *extra, "modules"],
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    if want_ok:
        if r.returncode == 0:
            return True, f"ok    {case.stem}: builds (control)"
        return False, f"FAIL  {case.stem}: the control case does not build:\n{log[-4000:]}"
    if r.returncode == 0:
        return False, f"FAIL  {case.stem}: the misuse builds ({what})"
    missing = [e for e in expects if e not in log]
    if missing:
        return False, f"FAIL  {case.stem}: expected {missing} in:\n{log[-4000:]}"
    # The error must be reported in the case (directly, or as the macro
    # invocation that led to it), not somewhere else in kapi. A check that
    # only fires when the misuse is compiled into code (a `const` assertion
    # in a generic function, evaluated per instantiation) is reported where
    # the assertion is: its case names that file (`// expect-at: <path>`),
    # and the expected message says which assertion it was.
    locations = re.findall(r"^\s*(?:-->|:::) (\S+?):\d+:\d+", log, re.M)
    allowed = [case.name] + [str(Path(repo) / p) for p in re.findall(r"^// expect-at: (\S+)$", text, re.M)]
    if not any(loc == a or loc.endswith(a) for loc in locations for a in allowed):
        return False, f"FAIL  {case.stem}: no error located in {', '.join(allowed)}:\n{log[-4000:]}"
    code = next((e for e in expects if re.fullmatch(r"E\d{4}", e)), expects[0] if expects else "")
    return True, f"ok    {case.stem}: rejected ({code}): {what}"


def main():
    kdir = vm.kernel_dir()
    kvars = vm.kmake_vars()
    cases = sorted(HERE.glob("*.rs"))
    if len(sys.argv) > 1:
        cases = [c for c in cases if any(a in c.stem for a in sys.argv[1:])]
    with tempfile.TemporaryDirectory(prefix="vbrs-compile-fail-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = list(pool.map(lambda c: run_case(c, kdir, kvars, tmp), cases))
    for _, line in results:
        print(line)
    failed = sum(1 for ok, _ in results if not ok)
    print(f"compile-fail: {len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
