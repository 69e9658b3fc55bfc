// SPDX-License-Identifier: GPL-2.0

//! Deflation: pages out of the balloon, the host told first, then given
//! back to the guest on whichever CPU is idle; draining the whole balloon.

use super::*;

/// Deflated pages on their way back to the guest.
#[pin_data]
pub(super) struct Freeing {
    /// The pages: a round is swapped in whole under the balloon lock, and
    /// taken out a chunk at a time ([`free_chunk`]) under the balloon lock
    /// or by the free work (holding `busy`). Innermost: no other lock is
    /// taken while it is held, and no page is freed.
    #[pin]
    pub(super) pages: Mutex<Batch<DeflatedPage>>,
    /// The free work's chunk, held while it frees: once this lock can be
    /// taken, every page the work took is back.
    #[pin]
    pub(super) busy: Mutex<Batch<DeflatedPage>>,
}

/// Kernel pages a CPU takes from [`Freeing`] at a time.
pub(super) const FREE_CHUNK: usize = 64;

/// Moves up to a chunk's room of pages from `pages` into `chunk` (empty)
/// and frees them outside the lock of `pages`, so that the other CPU can
/// take the next chunk meanwhile. False if none was left. The chunk is
/// preallocated: this runs in the OOM notifier too, deep in an allocation.
pub(super) fn free_chunk(
    pages: &Mutex<Batch<DeflatedPage>>,
    chunk: &mut Batch<DeflatedPage>,
) -> bool {
    chunk.fill_from(&mut pages.lock());
    let any = chunk.len() != 0;
    // Dropping a page frees it.
    chunk.clear();
    any
}

/// Deflated pages (the host told) and the work that gives them back to the
/// guest on whichever CPU is idle (the system unbound queue). The next
/// round, once its host is told, frees what is left beside the work. What
/// is left in the batch at teardown is freed when its last reference goes
/// (after the work has stopped).
pub(super) struct Freer {
    pub(super) batch: Arc<Freeing>,
    pub(super) work: Work<FreeDeflated>,
}

/// The work that gives deflated pages back to the guest: dropping a page
/// frees it. It owns only the batch, so the driver data can own the work.
pub(super) struct FreeDeflated(pub(super) Arc<Freeing>);

impl WorkHandler for FreeDeflated {
    fn run(&self, _me: &Running<'_>) -> Next {
        let mut chunk = self.0.busy.lock();
        while free_chunk(&self.0.pages, &mut chunk) {}
        Next::Idle
    }
}

/// Why pages leave the balloon.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The host's target.
    Host,
    /// The driver going (remove, freeze): as [`Why::Host`], but `actual`
    /// is written once, when the queues stop ([`stop_queues`]), not after
    /// every round. Each write is a trap to the host that costs as much as
    /// a round's own work in the guest, and nobody waits on the count
    /// while the balloon empties for good (the C driver writes it once
    /// too).
    Drain,
    /// An OOM notification: inflation then waits for the host to ask again.
    Oom,
}

/// Result of [`deflate`].
pub(super) enum Deflated {
    /// This many kernel pages left the balloon.
    Pages(usize),
    /// Nothing to take now: what is left is isolated by compaction (it
    /// returns shortly), or the device is frozen.
    Busy,
}

/// Takes up to `pages` kernel pages out of the balloon. The host hears of
/// them before the guest gets them back, whatever the features.
/// `last` says no round follows at once (the pages are then back in the
/// guest before the host sees the new size).
pub(super) fn deflate(core: &BalloonCore, pages: usize, why: Why, last: bool) -> Deflated {
    deflate_locked(core, &mut core.data().state.lock(), pages, why, last)
}

/// [`deflate`], under the balloon lock: at most one round
/// ([`logic::pages_per_round`]).
pub(super) fn deflate_locked(
    core: &BalloonCore,
    st: &mut State,
    pages: usize,
    why: Why,
    last: bool,
) -> Deflated {
    let sh = core.data();
    if st.queues.is_none() {
        return Deflated::Busy;
    }
    // Pages on their way in are the balloon's once the host has them.
    settle(core, st);
    let pages = pages.min(logic::frames_to_pages(st.held, sh.fpp) as usize);
    let got = core.dequeue(pages, &mut st.out);
    if got == 0 {
        if pages != 0 && core.is_drained() {
            // Cannot happen unless the bookkeeping is wrong; do not spin.
            dev_err!(
                sh.dev,
                "balloon counts {} frames but holds no pages; resetting the count\n",
                st.held
            );
            st.held = 0;
            sh.publish(st);
            return Deflated::Pages(0);
        }
        return Deflated::Busy;
    }
    if why == Why::Oom {
        sh.oom_pause.store(true, Ordering::Release);
    }
    let mut lens = [0usize; MSGS_PER_KICK];
    logic::encode_pages(
        st.out.as_slice().iter().map(|p| p.pfn()),
        PAGE_SIZE,
        st.msg.as_mut_slice(),
        &mut lens,
    );
    if let Some(q) = st.queues.as_mut() {
        sh.tell(&mut q.deflate, &st.msg, &lens, &sh.stats.deflate_msgs);
    }
    // Now the guest gets the pages back: later (on another CPU) while the
    // host is being told of the next round, unless this is the last.
    sh.free_deflated(st, got, why != Why::Oom && !last, why != Why::Drain);
    Deflated::Pages(got)
}

/// Deflates the whole balloon (remove, freeze), telling the host of every
/// page; the caller then stops the queues, which writes `actual`.
pub(super) fn drain(core: &BalloonCore) {
    let sh = core.data();
    // No inflation round follows (the update work is stopped or frozen).
    sh.filler.clear();
    let round = logic::pages_per_round(sh.fpp);
    loop {
        let held = {
            let mut st = sh.state.lock();
            settle(core, &mut st);
            logic::frames_to_pages(st.held, sh.fpp) as usize
        };
        if held == 0 {
            break;
        }
        if let Deflated::Busy = deflate(core, round, Why::Drain, held <= round) {
            msleep(10);
        }
    }
}
