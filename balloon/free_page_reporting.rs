// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (REPORTING): free memory lent to the host.

use super::*;

/// Free page reporting (REPORTING): lends the ranges to the host.
pub(super) struct ReportFree(pub(super) Arc<BalloonCore>);

impl ReportHandler for ReportFree {
    fn report(&self, ranges: &ReportedRanges<'_>) -> Result {
        let sh = self.0.data();
        let mut st = sh.state.lock();
        let Some(q) = st.queues.as_mut().and_then(|q| q.reporting.as_mut()) else {
            // Frozen: the allocator keeps the pages and tries again later.
            return Err(EBUSY);
        };
        q.lend(ranges)
            .inspect_err(|_| add(&sh.stats.host_errors, 1))?;
        add(&sh.stats.reports_sent, 1);
        add(&sh.stats.reported_ranges, ranges.len().into());
        Ok(())
    }
}
