// SPDX-License-Identifier: GPL-2.0

//! The guest floor: inflation stops while the guest's available memory is
//! at the floor (`floor_mib`), and once stopped resumes only a margin above
//! it (`logic::floor`).

use super::*;

/// Whether inflation is held at the floor. Only the update work changes it.
pub(super) struct Floor {
    held: AtomicBool,
}

impl Floor {
    pub(super) const fn new() -> Self {
        Self {
            held: AtomicBool::new(false),
        }
    }

    /// Whether inflation is held at the floor now.
    pub(super) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Inflation waits at the floor this round. Counts the wait, and a new
    /// hold if it was not held before; returns whether it was new.
    pub(super) fn hold(&self, stats: &Counters) -> bool {
        add(&stats.floor_waits, 1);
        let new = !self.held.swap(true, Ordering::Relaxed);
        if new {
            add(&stats.floor_holds, 1);
        }
        new
    }

    /// Inflation is not held: it may take memory, or the host no longer
    /// asks for any.
    pub(super) fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }
}

/// The guest's RAM in kernel pages, the balloon's pages included. Without
/// DEFLATE_ON_OOM the balloon's pages left the managed count.
fn ram_pages(core: &BalloonCore) -> u64 {
    let sh = core.data();
    let managed = mm::meminfo().total;
    if core.accounts() {
        let held = sh.stats.actual_frames.load(Ordering::Relaxed);
        managed + logic::frames_to_pages(held, sh.fpp)
    } else {
        managed
    }
}

/// The floor now, in kernel pages (`floor_mib`, or 1/32 of RAM).
pub(super) fn floor_pages(core: &BalloonCore) -> u64 {
    logic::floor::floor_pages(crate::FLOOR_MIB.get(), ram_pages(core), PAGE_SIZE)
}

/// Kernel pages inflation may take now without going below the floor,
/// counting `spare` pages the driver holds for inflation as available
/// (they are the guest's again if the round does not take them).
pub(super) fn inflate_budget(core: &BalloonCore, spare: u64) -> u64 {
    let available = mm::available_pages().saturating_add(spare);
    let held = core.data().floor.is_held();
    logic::floor::budget(available, floor_pages(core), held, PAGE_SIZE)
}
