// SPDX-License-Identifier: GPL-2.0

//! Working-set protection (`protect_working_set`, off by default): while
//! inflation makes the guest refault pages it judged part of its working
//! set, inflation holds and looks again a second later (`logic::workingset`);
//! rounds that evict page cache are paced so that the refaults can show.

use super::*;
use crate::kapi::sync::MutexGuard;
use logic::workingset::{Monitor, Verdict, RETRY_MS, SETTLE_LOOK_MS};

fn now_ms() -> i64 {
    Ktime::ktime_get().to_ms()
}

/// Ends a hold that lasted `ms`, if one did.
fn ended(sh: &Shared, ms: Option<i64>) {
    if let Some(ms) = ms {
        add(&sh.stats.workingset_held_ms, ms as u64);
    }
}

/// Whether inflation may take memory now. If not, the round waits this
/// many milliseconds. May sleep.
pub(super) fn workingset_allows(core: &BalloonCore) -> core::result::Result<(), u32> {
    let sh = core.data();
    let now = now_ms();
    let mut m = sh.workingset.lock();
    if crate::PROTECT_WORKING_SET.get() == 0 {
        ended(sh, m.reset(now));
        return Ok(());
    }
    match look(core, m, now) {
        None => Ok(()),
        Some(ms) => Err(ms),
    }
}

/// The balloon is at the host's target. If the rounds that brought it
/// there took page cache lately, their refaults are still looked at:
/// returns when to look again (ms), having given back what a hold that
/// starts now gives back. Otherwise inflation is idle ([`workingset_idle`]).
/// May sleep.
pub(super) fn workingset_settles(core: &BalloonCore) -> Option<u32> {
    let sh = core.data();
    let now = now_ms();
    let m = sh.workingset.lock();
    if crate::PROTECT_WORKING_SET.get() == 0 || !m.settling(now) {
        drop(m);
        workingset_idle(sh);
        return None;
    }
    Some(look(core, m, now).unwrap_or(SETTLE_LOOK_MS))
}

/// Looks at the activations at `now` with the monitor `m` (released
/// before anything is given back). In a hold, gives back what the look
/// says and returns when to look again; `None`: inflation may go on.
fn look(core: &BalloonCore, mut m: MutexGuard<'_, Monitor>, now: i64) -> Option<u32> {
    let sh = core.data();
    let (verdict, end) = m.look(now, mm::workingset_activations(), PAGE_SIZE);
    drop(m);
    ended(sh, end);
    let Verdict::Hold { new, give_back } = verdict else {
        return None;
    };
    if new {
        add(&sh.stats.workingset_holds, 1);
        if sh.notes.first(Note::WorkingSet) {
            dev_info!(
                sh.dev,
                "balloon holds: inflating evicts the guest's working set (protect_working_set); gives back {} KiB, looking again every {} ms\n",
                give_back * (PAGE_SIZE as u64 / 1024),
                RETRY_MS
            );
        }
    }
    give_back_pages(core, give_back);
    Some(RETRY_MS)
}

/// Gives the guest back `pages` kernel pages of the balloon, the host told
/// first, as deflation does.
fn give_back_pages(core: &BalloonCore, pages: u64) {
    let sh = core.data();
    let mut left = pages.min(usize::MAX as u64) as usize;
    while left != 0 {
        match deflate(core, left, Why::Host, true) {
            Deflated::Pages(0) | Deflated::Busy => break,
            Deflated::Pages(n) => {
                add(&sh.stats.workingset_returned_pages, n as u64);
                left = left.saturating_sub(n);
            }
        }
    }
}

/// An inflation round handed `pages` kernel pages to the host; `paced`:
/// it took page cache ([`workingset_paces`]), so a hold may give them back.
pub(super) fn workingset_inflated(sh: &Shared, pages: usize, paced: bool) {
    if paced && pages != 0 {
        sh.workingset.lock().inflated(now_ms(), pages as u64);
    }
}

/// How long after a round that took page cache the next one goes: slower
/// after each hold. May sleep.
pub(super) fn workingset_pace(sh: &Shared) -> u32 {
    sh.workingset.lock().pace_ms()
}

/// Whether a round of `pages` kernel pages must be followed by a look at
/// the refaults before the next round: with the protection on, when the
/// round takes more than the guest's free memory above the floor (so
/// reclaim evicts page cache for it). Rounds of at most 8 MiB then come
/// at most every `PACE_MS` (80 MiB/s; slower after holds): the working set's refaults show
/// before the balloon has gone far past the point where it stopped
/// fitting (at full speed a balloon can take a GiB before the first of
/// them, and refaults far past that point are no longer judged recent).
pub(super) fn workingset_paces(core: &BalloonCore, pages: usize) -> bool {
    if crate::PROTECT_WORKING_SET.get() == 0 || pages == 0 {
        return false;
    }
    let free = mm::meminfo().free;
    free.saturating_sub(pages as u64) < floor_pages(core)
}

/// Inflation is idle (the balloon is where the host wants it, or
/// deflating): a hold ends, and the next inflation measures afresh.
pub(super) fn workingset_idle(sh: &Shared) {
    let mut m = sh.workingset.lock();
    let end = m.reset(now_ms());
    drop(m);
    ended(sh, end);
    if end.is_some() {
        sh.notes.clear(Note::WorkingSet);
    }
}

/// Whether inflation is held by working-set protection now. May sleep.
pub(super) fn workingset_held(sh: &Shared) -> bool {
    sh.workingset.lock().held()
}
