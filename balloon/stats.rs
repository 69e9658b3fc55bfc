// SPDX-License-Identifier: GPL-2.0

//! Memory statistics for the host (STATS_VQ).

use super::*;

/// The guest's memory figures and VM events, from the same sources as the
/// C driver's stats. May sleep.
pub(super) fn snapshot() -> MemSnapshot {
    let mut s = MemSnapshot::default();
    if let Some(ev) = mm::vm_events() {
        s.has_events = true;
        s.swap_in_pages = ev.get(VmEvent::SwapIn);
        s.swap_out_pages = ev.get(VmEvent::SwapOut);
        s.major_faults = ev.get(VmEvent::MajorFault);
        s.minor_faults = ev.get(VmEvent::Fault);
        s.oom_kills = ev.get(VmEvent::OomKill);
        s.alloc_stalls = ev.alloc_stalls();
        s.async_scan_pages = ev.get(VmEvent::ScanKswapd);
        s.direct_scan_pages = ev.get(VmEvent::ScanDirect);
        s.async_reclaim_pages = ev.get(VmEvent::StealKswapd);
        s.direct_reclaim_pages = ev.get(VmEvent::StealDirect);
        s.hugetlb = ev.hugetlb();
    }
    let info = mm::meminfo();
    s.free_pages = info.free;
    s.total_pages = info.total;
    s.available_pages = mm::available_pages();
    s.cache_pages = mm::file_pages();
    s
}

/// Fills the stats buffer with `snap` and hands it to the host. The
/// snapshot is taken before the balloon lock: gathering it may sleep and
/// need not hold up inflation or the OOM path.
pub(super) fn send_stats(
    sh: &Shared,
    q: &mut PostedQueue<OutBuf>,
    mut buf: KBox<OutBuf>,
    snap: &MemSnapshot,
) {
    let tags = crate::STATS_TAGS.get();
    let len = logic::encode_stats(
        snap,
        kernel::page::PAGE_SHIFT as u32,
        tags,
        buf.as_mut_slice(),
    );
    buf.set_len(len);
    match q.post(buf) {
        Ok(()) => add(&sh.stats.stats_sent, 1),
        Err((_, e)) => {
            add(&sh.stats.host_errors, 1);
            dev_warn!(
                sh.dev,
                "cannot hand the stats buffer to the host: error {}\n",
                e.to_errno()
            );
        }
    }
}

/// The first stats buffer, filled (at probe and restore, as C does): the
/// host asks for stats by returning it. Made before the balloon lock is
/// taken (allocating under it could recurse into the OOM notifier).
pub(super) struct StatsPrimer(pub(super) Option<(KBox<OutBuf>, MemSnapshot)>);

impl StatsPrimer {
    pub(super) fn new(dev: &Device<Core>) -> Result<Self> {
        if !dev.has_feature(feature::STATS_VQ) {
            return Ok(Self(None));
        }
        let buf = KBox::new(OutBuf::new(logic::stat::BUF_BYTES)?, GFP_KERNEL)?;
        Ok(Self(Some((buf, snapshot()))))
    }

    /// Hands the buffer to the host, under the balloon lock.
    pub(super) fn send(self, sh: &Shared, st: &mut State) {
        let q = st.queues.as_mut().and_then(|q| q.stats.as_mut());
        if let (Some((buf, snap)), Some(q)) = (self.0, q) {
            send_stats(sh, q, buf, &snap);
        }
    }
}

/// The work that answers the host's stats requests (STATS_VQ): the host
/// returns the buffer when it wants fresh figures.
pub(super) struct StatsRefresh(pub(super) Arc<BalloonCore>);

impl WorkHandler for StatsRefresh {
    fn run(&self, _me: &Running<'_>) -> Next {
        let sh = self.0.data();
        sh.wakeup.process(WAKE_STATS);
        let snap = snapshot();
        let mut st = sh.state.lock();
        if let Some(q) = st.queues.as_mut().and_then(|q| q.stats.as_mut()) {
            if let Some((buf, _)) = q.take() {
                send_stats(sh, q, buf, &snap);
            }
        }
        drop(st);
        sh.wakeup.finish();
        Next::Idle
    }
}
