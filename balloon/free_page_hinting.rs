// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (FREE_PAGE_HINT): free blocks hinted to the host
//! during a migration, held until it returns them, and their shrinker.

use super::*;

/// The free page hint command ids: the host's latest (re-read from the
/// config space only after a config change) and the one of the run last
/// started.
pub(super) struct HintCmd {
    pub(super) received: AtomicU32,
    pub(super) stale: AtomicBool,
    pub(super) active: AtomicU32,
}

impl HintCmd {
    pub(super) fn new() -> Self {
        Self {
            received: AtomicU32::new(hint::CMD_ID_STOP),
            // Read at once: a run may be under way as the driver binds.
            stale: AtomicBool::new(true),
            active: AtomicU32::new(hint::CMD_ID_STOP),
        }
    }

    /// The config changed: the id must be read again (any context).
    pub(super) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// The host's id, read with `read` if it may have changed.
    pub(super) fn current(&self, read: impl FnOnce() -> u32) -> u32 {
        if self.stale.swap(false, Ordering::AcqRel) {
            self.received.store(read(), Ordering::Release);
        }
        self.received.load(Ordering::Acquire)
    }

    /// What to do now that the host shows `received`.
    pub(super) fn action(&self, received: u32) -> hint::Action {
        hint::action(received, self.active.load(Ordering::Acquire))
    }

    /// A run for `id` starts.
    pub(super) fn start(&self, id: u32) {
        self.active.store(id, Ordering::Release);
    }
}

/// Mirrors the number of hint blocks the driver holds (returned ones in
/// `held`, and those still on the queue) in `hint_blocks_held`, which the
/// shrinker's count reads without a lock.
pub(super) fn note_held(sh: &Shared, held: &PageBlocks) {
    let total = held.len() as u64 + sh.hints_in_flight.load(Ordering::Relaxed);
    sh.stats.hint_blocks_held.store(total, Ordering::Relaxed);
}

/// Takes back what the host returned on the free page queue: command ids
/// are dropped, hinted blocks join `held`. Under the balloon lock.
pub(super) fn reap_hints(sh: &Shared, q: &mut PolledQueue<FreePageBuf>, held: &mut PageBlocks) {
    while let Some((buf, _)) = q.take() {
        if let Either::Right(block) = KBox::into_inner(buf) {
            sh.hints_in_flight.fetch_sub(1, Ordering::Relaxed);
            // Blocks of another order are not made here; one would be
            // freed at once.
            let _ = held.push(block);
        }
    }
    note_held(sh, held);
}

/// Frees up to `blocks` held hint blocks to the guest, counting them in
/// `counter`; returns how many.
pub(super) fn free_hints(
    sh: &Shared,
    held: &mut PageBlocks,
    blocks: usize,
    counter: Option<&AtomicU64>,
) -> usize {
    let n = held.free(blocks);
    note_held(sh, held);
    if let Some(c) = counter {
        add(c, n as u64);
    }
    n
}

/// Frees every held hint block the host has returned by now, counting them
/// in `counter`; those still on the queue stay its own (until the host
/// returns them, or the layer resets the device on remove and freeze).
/// Returns how many the driver held, on the queue or not.
pub(super) fn free_all_hints(sh: &Shared, counter: Option<&AtomicU64>) -> u64 {
    // Whatever the host returned first (no queue when frozen: nothing then).
    let _ = with_free_page_queue(sh, |_| Ok(()));
    let held = sh.stats.hint_blocks_held.load(Ordering::Relaxed);
    free_hints(sh, &mut sh.hints.lock(), usize::MAX, counter);
    held
}

pub(super) fn hint_error(sh: &Shared, what: &str, e: Error) {
    add(&sh.stats.host_errors, 1);
    if sh.notes.first(Note::HintError) {
        dev_warn!(
            sh.dev,
            "free page hinting: cannot send {} to the host (error {}); further errors are only counted\n",
            what,
            e.to_errno()
        );
    }
}

/// Runs `f` on the free page queue, under the balloon lock, after taking
/// back what the host returned ([`reap_hints`]). `ENODEV` when the queues
/// are gone (frozen or being removed).
pub(super) fn with_free_page_queue<T>(
    sh: &Shared,
    f: impl FnOnce(&mut PolledQueue<FreePageBuf>) -> Result<T>,
) -> Result<T> {
    let mut st = sh.state.lock();
    let q = st
        .queues
        .as_mut()
        .and_then(|q| q.free_page.as_mut())
        .ok_or(ENODEV)?;
    reap_hints(sh, q, &mut sh.hints.lock());
    f(q)
}

/// A command id as the free page queue carries it: little-endian `u32`.
pub(super) fn hint_cmd_buf(sh: &Shared, id: u32) -> Result<KBox<FreePageBuf>> {
    let mut buf = OutBuf::new(4)?;
    buf.as_mut_slice().copy_from_slice(&id.to_le_bytes());
    if take_knob(&sh.knobs.short_hint_cmd) {
        buf.set_len(2);
    }
    Ok(KBox::new(Either::Left(buf), GFP_KERNEL)?)
}

/// Whether to inject the fault counted by `knob` now (and count it).
/// Knobs are only writable (in debugfs) on fault-injection kernels.
pub(super) fn take_knob(knob: &AtomicU32) -> bool {
    cfg!(CONFIG_FAULT_INJECTION_DEBUG_FS)
        && knob.load(Ordering::Relaxed) != 0
        && knob
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok()
}

/// Hands `cmd` to the free page queue.
pub(super) fn send_hint_cmd(sh: &Shared, id: u32, what: &str) -> Result {
    let buf = hint_cmd_buf(sh, id).inspect_err(|&e| hint_error(sh, what, e))?;
    with_free_page_queue(sh, |q| q.post(buf).map_err(|(_, e)| e))
        .inspect_err(|&e| hint_error(sh, what, e))
}

/// One hinting run for command id `id`: echo the id, hand the host free
/// blocks until none is left, the host changes the id or the work is being
/// stopped, then send stop. The blocks stay held (first by the queue, then,
/// once the host returns them, in `hints`) until the host says done, or the
/// shrinker or removal frees them.
pub(super) fn hint_run(sh: &Shared, id: u32, me: &Running<'_>) {
    sh.hint_cmd.start(id);
    add(&sh.stats.hint_runs, 1);
    if send_hint_cmd(sh, id, "a start id").is_err() {
        return;
    }
    let mut pending: Option<KBox<FreePageBuf>> = None;
    let mut stalled_ms = 0u32;
    loop {
        if me.stopping() || !hint::keep_going(id, sh.hint_cmd_id()) {
            break;
        }
        let buf = match pending.take() {
            Some(b) => b,
            None => {
                // No free block left: everything free is hinted. This is how
                // a run normally ends, so it is not reported.
                let Some(block) = PageBlock::take_free(pages::MAX_ORDER) else {
                    break;
                };
                match KBox::new(Either::Right(block), GFP_KERNEL) {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
        };
        // One entry always stays free for the stop id that ends the run.
        let sent = with_free_page_queue(sh, |q| {
            if q.free_descriptors() <= 1 {
                return Ok(Some(buf));
            }
            q.post(buf).map_err(|(_, e)| e)?;
            sh.hints_in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        });
        match sent {
            Ok(None) => {
                add(&sh.stats.hinted_blocks, 1);
                stalled_ms = 0;
            }
            Ok(Some(buf)) => {
                // The ring is full: the host has not caught up yet.
                if stalled_ms >= hint::STALL_MS {
                    add(&sh.stats.hint_stalls, 1);
                    dev_warn!(
                        sh.dev,
                        "free page hinting: the host took no hint for {} ms; ending run {}\n",
                        stalled_ms,
                        id
                    );
                    break;
                }
                pending = Some(buf);
                msleep(hint::STALL_POLL_MS);
                stalled_ms += hint::STALL_POLL_MS;
            }
            Err(e) => {
                hint_error(sh, "a free block", e);
                break;
            }
        }
        cond_resched();
    }
    drop(pending);
    let _ = send_hint_cmd(sh, hint::CMD_ID_STOP, "a stop id");
}

/// The free page hint work (FREE_PAGE_HINT), on its own freezable,
/// CPU-intensive workqueue: a run may take all of the guest's free memory.
pub(super) struct FreePageHint {
    pub(super) core: Arc<BalloonCore>,
    /// Looks, since the host said done, for blocks it had not returned.
    pub(super) done_polls: AtomicU32,
}

impl WorkHandler for FreePageHint {
    fn run(&self, me: &Running<'_>) -> Next {
        let sh = self.core.data();
        let received = sh.hint_cmd_id();
        match sh.hint_cmd.action(received) {
            hint::Action::ReturnAll => {
                free_all_hints(sh, Some(&sh.stats.hint_blocks_done));
                // Blocks still on the ring stay the queue's until the host
                // returns them, which it may do after saying done (QEMU's
                // hint thread empties the ring after the run's stop id,
                // beside this work). The queue raises no interrupt: look
                // again shortly, for a while.
                if sh.hints_in_flight.load(Ordering::Relaxed) == 0 {
                    self.done_polls.store(0, Ordering::Relaxed);
                } else if self.done_polls.fetch_add(1, Ordering::Relaxed) < hint::DONE_POLLS {
                    return Next::After(hint::DONE_POLL_MS);
                }
            }
            hint::Action::Start(id) => {
                self.done_polls.store(0, Ordering::Relaxed);
                hint_run(sh, id, me)
            }
            hint::Action::Nothing => {}
        }
        Next::Idle
    }
}

/// The shrinker of FREE_PAGE_HINT: under memory pressure, held hint blocks
/// go back to the guest before the host is done with them (allowed: the
/// host must keep whatever the guest writes to a hinted page later).
pub(super) struct HintShrink(pub(super) Arc<BalloonCore>);

impl ShrinkHandler for HintShrink {
    fn count(&self) -> u64 {
        let held = self.0.data().stats.hint_blocks_held.load(Ordering::Relaxed);
        held.saturating_mul(hint::block_pages(pages::MAX_ORDER))
    }

    fn scan(&self, nr_to_scan: u64) -> u64 {
        let sh = self.0.data();
        let want = hint::blocks_for(nr_to_scan, pages::MAX_ORDER);
        // Reclaim never waits here: busy locks (a run adding a block, DONE
        // freeing all) leave the work for the next pass.
        let Some(mut held) = sh.hints.try_lock() else {
            return 0;
        };
        // Blocks the host returned since the queue was last looked at.
        if let Some(mut st) = sh.state.try_lock() {
            if let Some(q) = st.queues.as_mut().and_then(|q| q.free_page.as_mut()) {
                reap_hints(sh, q, &mut held);
            }
        }
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let n = free_hints(sh, &mut held, want, Some(&sh.stats.hint_blocks_shrunk));
        (n as u64).saturating_mul(hint::block_pages(pages::MAX_ORDER))
    }
}
