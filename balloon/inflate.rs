// SPDX-License-Identifier: GPL-2.0

//! Inflation: rounds allocated ahead on another CPU, handed to the host
//! without waiting, and collected into the balloon once the host has them.

use super::*;

/// Pages allocated for the next inflation round by [`FillAhead`], on
/// another CPU while this one hands the current round to the host, and
/// how many more it should allocate.
#[pin_data]
pub(super) struct Ahead {
    /// Kernel pages the fill work is to allocate when it runs next.
    pub(super) want: AtomicUsize,
    /// What it allocated. Its lock is taken by the update work (with at
    /// most `scratch` held, never the balloon lock), by `stop_queues` and
    /// `drain` (holding nothing), by the fill work while it allocates
    /// (reclaim may then only try other locks), or tried by the OOM path.
    #[pin]
    pub(super) pages: Mutex<Batch<NewPage>>,
}

/// Ahead-allocated pages and the work that allocates them, on the system
/// unbound queue (so on whichever CPU is idle, not the one busy with the
/// host). What is left at teardown is freed when the last reference goes
/// (after the work has stopped).
pub(super) struct Filler {
    pub(super) ahead: Arc<Ahead>,
    pub(super) work: Work<FillAhead>,
}

/// The work that allocates the next inflation round. It owns only the
/// batch, so the driver data can own the work.
pub(super) struct FillAhead(pub(super) Arc<Ahead>);

impl WorkHandler for FillAhead {
    fn run(&self, _me: &Running<'_>) -> Next {
        let mut pages = self.0.pages.lock();
        // Read under the lock: whoever cleared the batch set it to 0
        // first, so nothing is allocated for a round that will not come.
        let want = self.0.want.swap(0, Ordering::AcqRel);
        // Short of memory, the round itself tries again (and counts the
        // failure). Pages the host cannot be told of are checked here
        // rather than on the CPU busy with the host; the round allocates
        // in place of any freed.
        top_up(&mut pages, want);
        Next::Idle
    }
}

impl Filler {
    /// Asks for `pages` kernel pages to be allocated on another CPU (0:
    /// none).
    pub(super) fn request(&self, pages: usize) {
        self.ahead.want.store(pages, Ordering::Release);
        if pages != 0 {
            self.work.queue();
        }
    }

    /// Moves what was allocated ahead into `into` (empty), waiting for an
    /// allocation running, and cancels what was asked for.
    pub(super) fn take(&self, into: &mut Batch<NewPage>) {
        self.ahead.want.store(0, Ordering::Release);
        let mut pages = self.ahead.pages.lock();
        core::mem::swap(&mut *pages, into);
    }

    /// Gives back what was allocated ahead (waiting for an allocation
    /// running), and cancels what was asked for.
    pub(super) fn clear(&self) {
        self.ahead.want.store(0, Ordering::Release);
        self.ahead.pages.lock().clear();
    }

    /// [`Filler::clear`] for the OOM path, which must not wait for an
    /// allocation: returns how many pages went back (none if the fill work
    /// is allocating; it allocates no more than it was asked, and the
    /// round that takes them frees them during an OOM pause).
    pub(super) fn try_clear(&self) -> usize {
        self.ahead.want.store(0, Ordering::Release);
        match self.ahead.pages.try_lock() {
            Some(mut pages) => {
                let n = pages.len();
                pages.clear();
                n
            }
            None => 0,
        }
    }
}

/// Allocates pages into `pages` until it holds `want`: in bulk, from the
/// per-CPU lists while memory is plentiful, a page at a time through the
/// slow path when it is not. Of the new pages, those the host cannot be
/// told of (a 4 KiB frame number above 32 bits, past 16 TiB) are freed
/// again. Returns whether it fell short (memory, room, or such a page).
pub(super) fn top_up(pages: &mut Batch<NewPage>, want: usize) -> bool {
    let had = pages.len();
    let mut short = false;
    while pages.len() < want {
        if pages.room() == 0 || pages.alloc_bulk(want - pages.len()) == 0 {
            short = true;
            break;
        }
    }
    let allocated = pages.len();
    pages.retain_from(had, |p| logic::frame_fits(p.pfn(), PAGE_SIZE));
    short || pages.len() < allocated
}

/// Collects the inflate messages on the ring: the pages of each one the
/// host took enter the balloon, and `held` and `actual` follow. If the host
/// is lost meanwhile, the device was reset and the pages of the messages it
/// had went back to the guest with them. Afterwards nothing is in flight.
pub(super) fn settle(core: &BalloonCore, st: &mut State) {
    let sh = core.data();
    let Some(q) = st.queues.as_mut() else {
        st.inflating = 0;
        return;
    };
    let mut got = 0usize;
    while q.inflate.in_flight() != 0 {
        let left = q.inflate.in_flight();
        match q.inflate.wait() {
            Ok((mut msg, len)) => {
                got += msg.with.len();
                core.enqueue_all(&mut msg.with);
                sh.returned(q, msg, len);
            }
            Err(e) => {
                sh.lost_host(e, left);
                break;
            }
        }
    }
    st.inflating = 0;
    if got != 0 {
        st.held += got as u64 * u64::from(sh.fpp);
        add(&sh.stats.inflated_pages, got as u64);
        sh.publish(st);
    }
}

/// Hands the pages of `fresh` to the host, a message at a time (at most
/// [`MSGS_PER_KICK`], one kick), without waiting: each message owns its
/// pages until the host returns it ([`settle`]). Returns how many pages
/// went; those left in `fresh` did not (no message or ring room left).
pub(super) fn post_inflate(sh: &Shared, q: &mut Queues, fresh: &mut Batch<NewPage>) -> usize {
    let mut pages = 0usize;
    let mut msgs = 0u64;
    while fresh.len() != 0 {
        let Some(mut msg) = q.inflate_spare.pop() else {
            break;
        };
        msg.with.fill_from(fresh);
        let mut lens = [0usize; 1];
        let m = &mut *msg;
        let n = logic::encode_pages(
            m.with.as_slice().iter().map(|p| p.pfn()),
            PAGE_SIZE,
            m.buf.as_mut_slice(),
            &mut lens,
        );
        // A message has room for the frames of as many pages as its batch
        // holds, so every page was encoded; one that was not is freed here,
        // never described to the host.
        while msg.with.len() > n {
            drop(msg.with.pop());
        }
        msg.buf.set_len(lens[0]);
        match q.inflate.add(msg) {
            Ok(()) => {
                pages += n;
                msgs += 1;
            }
            Err((mut msg, _)) => {
                // Not on the ring (it is full, or gone): its pages go back.
                msg.with.clear();
                let _ = q.inflate_spare.push(msg);
                break;
            }
        }
    }
    if msgs != 0 {
        q.inflate.kick();
        add(&sh.stats.inflate_msgs, msgs);
    }
    pages
}

/// One round of inflation: up to `pages` kernel pages. Most were allocated
/// ahead, on another CPU while this one handed the last round to the host
/// (which, on hosts that answer from another thread, takes it meanwhile);
/// they are handed to the host, and collected by the next round or by
/// whatever needs the balloon lock next ([`settle`]). Then `next` pages are
/// asked of the fill work for the round after (0: none follows).
pub(super) fn inflate(core: &BalloonCore, pages: usize, next: usize) -> Next {
    let sh = core.data();
    // With working-set protection, no round while inflation evicts the
    // working set; what was allocated ahead goes back.
    if let Err(ms) = workingset_allows(core) {
        sh.filler.clear();
        settle(core, &mut sh.state.lock());
        sh.wakeup.finish();
        return Next::After(ms);
    }
    let mut fresh = sh.scratch.lock();
    // Round start: `fresh` is empty (every exit below empties it).
    sh.filler.take(&mut fresh);
    let ahead = fresh.len();
    // A host that cannot hear gets no more memory. The pages allocated
    // ahead count as available: what the round does not take goes back.
    let budget = if sh.host_gone.load(Ordering::Acquire) {
        0
    } else {
        inflate_budget(core, ahead as u64)
    };
    if budget != 0 {
        sh.floor.release();
    }
    let held_back = budget < pages as u64;
    let pages = pages.min(budget as usize);
    // With working-set protection, a round that takes page cache is
    // followed by a look at the refaults before the next one.
    let paced = workingset_paces(core, pages);
    while fresh.len() > pages {
        drop(fresh.pop());
    }
    // Allocate outside the balloon lock, as the C driver does: allocation
    // may reclaim and compact, and the OOM path needs the lock meanwhile.
    // A page the host cannot be told of counts as a failed allocation.
    let failed = top_up(&mut fresh, pages);
    add(
        &sh.stats.pages_allocated_ahead,
        ahead.min(fresh.len()) as u64,
    );
    // The round after is allocated on another CPU while this one is handed
    // to the host, within what the guest can spare once this one is gone.
    // Not after a failure (the retry waits) or a hold (the next round
    // decides again).
    if !failed && !held_back && !paced && pages != 0 && !sh.oom_pause.load(Ordering::Acquire) {
        let budget = inflate_budget(core, 0).min(usize::MAX as u64) as usize;
        sh.filler.request(next.min(budget));
    }
    let mut guard = sh.state.lock();
    let st = &mut *guard;
    // The last round's messages, which the host had while we allocated.
    settle(core, st);
    // Frozen or going away, a host that stopped hearing, or an OOM
    // notification that freed memory while we allocated (the guest needs
    // it more than the host): the pages go back at once, and those of the
    // round after once the balloon lock is free again (the OOM path may
    // be waiting for it).
    let Some(q) = st.queues.as_mut() else {
        fresh.clear();
        drop(guard);
        sh.filler.clear();
        return Next::Idle;
    };
    if sh.host_gone.load(Ordering::Acquire) || sh.oom_pause.load(Ordering::Acquire) {
        fresh.clear();
        drop(guard);
        sh.filler.clear();
        return Next::Idle;
    }
    if pages == 0 {
        let new = sh.floor.hold(&sh.stats);
        // Holding at the floor may last: it must not keep the system from
        // sleeping (the retries go on).
        sh.wakeup.finish();
        if new && sh.notes.first(Note::Short) {
            dev_info!(
                sh.dev,
                "balloon holds at {} KiB: the guest keeps {} KiB available (floor {} KiB); retrying every {} ms\n",
                st.held * 4,
                mm::available_pages() * (PAGE_SIZE as u64 / 1024),
                floor_pages(core) * (PAGE_SIZE as u64 / 1024),
                logic::ALLOC_RETRY_MS
            );
        }
        return Next::After(logic::ALLOC_RETRY_MS);
    }
    let sent = post_inflate(sh, q, &mut fresh);
    workingset_inflated(sh, sent, paced);
    // Whatever could not be handed over goes back to the guest now.
    fresh.clear();
    drop(fresh);
    st.inflating += sent as u64 * u64::from(sh.fpp);
    if held_back {
        // The next round decides whether anything more can be spared.
        sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
        return Next::Again;
    }
    if failed {
        add(&sh.stats.alloc_failures, 1);
        let failures = sh.alloc_failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if sh.notes.first(Note::Short) {
            dev_info!(
                sh.dev,
                "out of memory for the balloon at {} KiB; retrying in {} to {} ms\n",
                (st.held + st.inflating) * 4,
                logic::ALLOC_RETRY_FIRST_MS,
                logic::ALLOC_RETRY_MS
            );
        }
        // Nothing stays in flight through the wait.
        settle(core, st);
        return Next::After(logic::alloc_retry_ms(failures));
    }
    sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
    if paced {
        return Next::After(workingset_pace(sh));
    }
    Next::Again
}
