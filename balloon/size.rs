// SPDX-License-Identifier: GPL-2.0

//! The work that follows the host's target: each run moves the balloon one
//! round towards it.

use super::*;

/// The work that follows the host's target.
pub(super) struct UpdateSize(pub(super) Arc<BalloonCore>);

impl WorkHandler for UpdateSize {
    fn run(&self, _me: &Running<'_>) -> Next {
        let sh = self.0.data();
        sh.wakeup.process(WAKE_ADJUST);
        let next = self.step();
        // The system may sleep once the balloon is where the host wants it
        // (or waits for something only the host can change).
        if next == Next::Idle {
            sh.wakeup.finish();
        }
        next
    }
}

impl UpdateSize {
    pub(super) fn step(&self) -> Next {
        let core = &*self.0;
        let sh = core.data();
        let Ok(num_pages) = sh.config.read(vb::NUM_PAGES) else {
            return Next::Idle;
        };
        sh.stats
            .target_frames
            .store(num_pages.into(), Ordering::Relaxed);
        let target = logic::target_frames(num_pages, sh.fpp);
        let (held, inflating) = {
            let st = sh.state.lock();
            (st.held, st.inflating)
        };
        // Pages on their way in count towards the target: the next round
        // is allocated while the host takes them.
        let step = logic::next_step(target, held + inflating, sh.fpp);
        if !matches!(step, Step::Inflate(_)) {
            // The host asks for no more memory: nothing is held at the floor
            // or (below) for the working set.
            sh.floor.release();
        }
        if matches!(step, Step::Deflate(_)) {
            workingset_idle(sh);
        }
        let oom_pause = sh.oom_pause.load(Ordering::Acquire);
        if !matches!(step, Step::Inflate(_)) || oom_pause {
            // No inflation round follows: what was allocated for one goes
            // back (an OOM notification may have found it busy).
            sh.filler.clear();
        }
        match step {
            // After an OOM deflation the guest needs the memory more than
            // the host does; wait for the host to ask again.
            Step::Inflate(_) if oom_pause => {
                settle(core, &mut sh.state.lock());
                Next::Idle
            }
            Step::Inflate(n) => {
                // And the round after, if this one leaves the balloon short.
                let after = held + inflating + n as u64 * u64::from(sh.fpp);
                let next = match logic::next_step(target, after, sh.fpp) {
                    Step::Inflate(m) => m,
                    _ => 0,
                };
                inflate(core, n, next)
            }
            // Anything else is decided on what the host has taken.
            _ if inflating != 0 => {
                settle(core, &mut sh.state.lock());
                Next::Again
            }
            Step::Deflate(n) => {
                let last = held.saturating_sub(n as u64 * u64::from(sh.fpp)) <= target;
                match deflate(core, n, Why::Host, last) {
                    Deflated::Pages(_) => Next::Again,
                    Deflated::Busy => Next::After(10),
                }
            }
            Step::Done => {
                sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
                if sh.notes.clear(Note::Short) {
                    dev_info!(
                        sh.dev,
                        "balloon reached the host's target of {} KiB\n",
                        held * 4
                    );
                }
                // The last rounds' refaults may show only now.
                match workingset_settles(core) {
                    Some(ms) => {
                        sh.wakeup.finish();
                        Next::After(ms)
                    }
                    None => Next::Idle,
                }
            }
        }
    }
}
