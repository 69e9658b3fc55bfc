// SPDX-License-Identifier: GPL-2.0

//! Deflate-on-OOM (DEFLATE_ON_OOM): the OOM notifier gives pages back,
//! doubling within a burst.

use super::*;

/// The OOM notifier's handler (DEFLATE_ON_OOM): each notification of a
/// burst deflates twice what the last did, from 1 MiB up to
/// `oom_deflate_max_mib` ([`logic::oom`]), in rounds of at most
/// [`MSGS_PER_KICK`] messages, the host told before each round's pages go
/// back.
pub(super) struct OomDeflate(pub(super) Arc<BalloonCore>);

impl OomHandler for OomDeflate {
    fn out_of_memory(&self) -> u64 {
        let core = &*self.0;
        let sh = core.data();
        add(&sh.stats.oom_notifications, 1);
        // Sleeps on the balloon lock for a few host round trips at most:
        // inflation allocates before it takes the lock, never while holding
        // it, and migration's two messages are one each. Then the round
        // inflation left with the host joins the balloon (one more round
        // trip at most), so that it can be given back too.
        let mut guard = sh.state.lock();
        let st = &mut *guard;
        settle(core, st);
        let now = Ktime::ktime_get().to_ms();
        let quiet = crate::OOM_QUIET_MS.get();
        if !st.ramp.in_burst(now, quiet) {
            add(&sh.stats.oom_bursts, 1);
        }
        let mib = st.ramp.step(now, crate::OOM_DEFLATE_MAX_MIB.get(), quiet);
        let want = logic::oom::pages(mib, sh.fpp, st.held) as usize;
        let round = logic::pages_per_round(sh.fpp);
        let mut freed = 0usize;
        while freed < want {
            match deflate_locked(core, st, (want - freed).min(round), Why::Oom, true) {
                Deflated::Pages(0) | Deflated::Busy => break,
                Deflated::Pages(n) => freed += n,
            }
        }
        add(&sh.stats.oom_deflated_pages, freed as u64);
        drop(guard);
        // Pages allocated ahead for an inflation round go back too, unless
        // the fill work is busy (the update work frees them then: the OOM
        // pause stops inflation). They count only with a deflation, which
        // set the pause: otherwise inflation would take them right back,
        // and a kill may be what the guest needs.
        let spared = sh.filler.try_clear();
        if freed == 0 {
            return 0;
        }
        (freed + spared) as u64
    }
}
