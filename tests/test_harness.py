# SPDX-License-Identifier: GPL-2.0
"""The console check itself (vm.Guest.splats, hang_reported), on console
text shaped like what the kernels print: what it must report and what it
may forgive. No guest runs; these guard the checks every other test relies
on."""

import pytest

import vm


class Console(vm.Guest):
    """A guest that is only a console log."""

    def __init__(self, tmp_path, text, expect_oom=False):
        super().__init__(tmp_path, tmp_path, workdir=tmp_path / "g")
        self.console.write_text(text)
        self.expect_oom = expect_oom


def report(comm, frames, what="page allocation failure: order:0, mode:0x140cca(GFP_HIGHUSER_MOVABLE)"):
    lines = [f"[   12.000001] {comm}: {what}",
             f"[   12.000002] CPU: 1 UID: 0 PID: 42 Comm: {comm} Not tainted 6.12.118 #1",
             "[   12.000003] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)",
             "[   12.000004] Call Trace:",
             "[   12.000005]  <TASK>",
             "[   12.000006]  dump_stack_lvl+0x5d/0x80"]
    lines += [f"[   12.000007]  {f}" for f in frames]
    lines += ["[   12.000008]  </TASK>", "[   12.000009] Mem-Info:",
              "[   12.000010] active_anon:1 inactive_anon:2"]
    return "\n".join(lines) + "\n"


DRIVER_FRAMES = ["warn_alloc+0x12/0x140", "__alloc_pages_noprof+0x2a1/0x300",
                 "vbrs_helper_balloon_pages_alloc_bulk+0x1f/0x30 [virtio_balloon_rs]",
                 "_RNvNtCs1_17virtio_balloon_rs7balloon6top_up+0x44/0x90 [virtio_balloon_rs]",
                 "process_one_work+0x1f0/0x3f0"]
OTHER_FRAMES = ["warn_alloc+0x12/0x140", "__alloc_pages_noprof+0x2a1/0x300",
                "do_anonymous_page+0x80/0x300", "handle_mm_fault+0x100/0x200"]


def test_an_expected_report_is_forgiven_unless_the_driver_is_on_its_stack(tmp_path):
    assert Console(tmp_path, report("memhog", OTHER_FRAMES), expect_oom=True).splats() == []
    ours = Console(tmp_path, report("kworker/1:2", DRIVER_FRAMES), expect_oom=True).splats()
    assert ours and "the driver is on the stack of" in ours[0], ours
    assert any("[virtio_balloon_rs]" in l for l in ours), ours
    # Unexpected, any report is a problem.
    assert Console(tmp_path, report("memhog", OTHER_FRAMES)).splats()


def test_an_oom_kill_report_from_the_driver_is_a_problem(tmp_path):
    text = report("kworker/0:1", DRIVER_FRAMES, what="kworker/0:1 invoked oom-killer: gfp_mask=0x140cca")
    assert Console(tmp_path, text, expect_oom=True).splats()


@pytest.mark.parametrize("line", [
    "[   63.060525] INFO: task kworker/0:1:9 blocked for more than 30 seconds.",
    "[   44.000000] watchdog: BUG: soft lockup - CPU#1 stuck for 41s! [kworker/1:1:33]",
    "[   70.000000] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 41s!",
    "[   80.000000] rcu: INFO: rcu_sched self-detected stall on CPU",
    "[   80.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
    "[   80.000000] rcu: INFO: rcu_sched detected expedited stalls on CPUs/tasks: { 1-... }",
])
def test_the_detectors_reports_are_hangs_and_problems(tmp_path, line):
    g = Console(tmp_path, "[    1.0] booted\n" + line + "\n")
    assert g.hang_reported() == line
    assert g.splats()


def test_an_arm64_trace_is_a_problem(tmp_path):
    # arm64 prints "Call trace:", not "Call Trace:".
    text = "[    5.1] some driver said something\n[    5.2] Call trace:\n[    5.3]  show_stack+0x18/0x24\n"
    assert Console(tmp_path, text).splats()
    assert Console(tmp_path, "[    1.0] booted\n").hang_reported() is None
