// SPDX-License-Identifier: GPL-2.0

//! Deflate on OOM: how much each OOM notification gives back.
//!
//! The kernel runs a full reclaim pass before each OOM notification
//! (several milliseconds), so a balloon that gives back a fixed 1 MiB per
//! notification, as the C driver does, makes a process short of N MiB
//! wait for N reclaim passes. Here the notifications of a burst (each less
//! than the quiet period after the one before) give back 1 MiB, then twice
//! the last each time, up to a cap: N MiB take about log2(N) passes up to
//! the cap and N / cap beyond it. A notification after a quiet period
//! starts again at 1 MiB.
//!
//! The memory given back beyond what the burst needed (the overshoot) is
//! less than the last step, because the step before it did not suffice:
//! each step is at most one MiB more than all the steps before it in the
//! burst, so the overshoot stays below both the need and the cap.

use super::{frames_to_pages, OOM_FRAMES};

/// The default cap of one step, in MiB (`oom_deflate_max_mib`).
pub(crate) const DEFAULT_MAX_MIB: u32 = 64;
/// The largest cap the parameter takes.
pub(crate) const LIMIT_MAX_MIB: u32 = 1024;
/// The default quiet period that ends a burst (`oom_quiet_ms`).
pub(crate) const DEFAULT_QUIET_MS: u32 = 1000;
/// The longest quiet period the parameter takes.
pub(crate) const LIMIT_QUIET_MS: u32 = 60_000;

/// The state of the ramp between notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ramp {
    /// The step of the next notification if it comes within the burst.
    next_mib: u32,
    /// When the last notification came (milliseconds, monotonic).
    last_ms: Option<i64>,
}

impl Ramp {
    /// No notification yet.
    pub(crate) const fn new() -> Self {
        Self {
            next_mib: 1,
            last_ms: None,
        }
    }

    /// Whether a notification at `now_ms` belongs to the burst of the
    /// last one (a clock that went backwards starts a new burst).
    pub(crate) const fn in_burst(&self, now_ms: i64, quiet_ms: u32) -> bool {
        match self.last_ms {
            Some(t) => now_ms >= t && now_ms - t < quiet_ms as i64,
            None => false,
        }
    }

    /// A notification at `now_ms`: the MiB it deflates, with steps of at
    /// most `max_mib` (at least 1) and bursts ended by `quiet_ms`.
    pub(crate) fn step(&mut self, now_ms: i64, max_mib: u32, quiet_ms: u32) -> u32 {
        let max = if max_mib == 0 { 1 } else { max_mib };
        let mib = if self.in_burst(now_ms, quiet_ms) {
            if self.next_mib > max {
                max
            } else {
                self.next_mib
            }
        } else {
            1
        };
        let next = mib.saturating_mul(2);
        self.next_mib = if next > max { max } else { next };
        self.last_ms = Some(now_ms);
        mib
    }
}

/// Kernel pages for a step of `mib` MiB, at least one page, and never
/// more than the `held_frames` 4 KiB frames the balloon holds. The
/// notifier reports what it freed in kernel pages, not in frames: the
/// conversion the C driver once got wrong.
pub(crate) const fn pages(mib: u32, frames_per_page: u32, held_frames: u64) -> u64 {
    let want = frames_to_pages(mib as u64 * OOM_FRAMES as u64, frames_per_page);
    let want = if want == 0 { 1 } else { want };
    let held = frames_to_pages(held_frames, frames_per_page);
    if want > held {
        held
    } else {
        want
    }
}
