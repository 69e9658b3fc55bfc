// SPDX-License-Identifier: GPL-2.0

//! The driver's counters and fault knobs (debugfs), and the messages it
//! says once per episode.

use super::*;

counters! {
    /// The driver's own counters, readable in
    /// `/sys/kernel/debug/virtio_balloon_rs/virtio<N>/` (see README.md).
    pub(crate) struct Counters {
        /// The host's latest request (`num_pages`), in 4 KiB frames.
        target_frames,
        /// 4 KiB frames in the balloon (what `actual` reports).
        actual_frames,
        /// Kernel pages put into the balloon, ever.
        inflated_pages,
        /// Kernel pages taken out of the balloon, ever.
        deflated_pages,
        /// Balloon pages moved by compaction.
        migrated_pages,
        /// Migrations refused because the balloon lock was busy (compaction
        /// retries them).
        migrations_deferred,
        /// Messages sent on the inflate queue.
        inflate_msgs,
        /// Messages sent on the deflate queue.
        deflate_msgs,
        /// Rounds cut short because no page could be allocated.
        alloc_failures,
        /// Kernel pages an inflation round took from those allocated for
        /// it ahead, on another CPU while the round before was handed to
        /// the host.
        pages_allocated_ahead,
        /// Times inflation stopped at the guest floor (`floor_mib`): it
        /// resumes only a margin above it.
        floor_holds,
        /// Inflation rounds that waited at the floor.
        floor_waits,
        /// Times inflation held because it was evicting the guest's working
        /// set (`protect_working_set`).
        workingset_holds,
        /// Milliseconds those holds lasted, counted when each ends.
        workingset_held_ms,
        /// Kernel pages those holds gave back (what inflation took in the
        /// second before each).
        workingset_returned_pages,
        /// Config-change interrupts seen.
        config_changes,
        /// Buffers the host returned with a used length other than 0.
        host_odd_used_len,
        /// Messages that could not be sent (broken or vanished device).
        host_errors,
        /// Stats buffers sent to the host (STATS_VQ).
        stats_sent,
        /// Free page reports sent to the host (REPORTING).
        reports_sent,
        /// Page ranges in those reports.
        reported_ranges,
        /// OOM notifications received (DEFLATE_ON_OOM).
        oom_notifications,
        /// Bursts of OOM notifications: the first after a quiet period
        /// deflates 1 MiB again.
        oom_bursts,
        /// Kernel pages given back to the guest by OOM notifications.
        oom_deflated_pages,
        /// The host's latest free page hint command id (FREE_PAGE_HINT).
        hint_cmd_id,
        /// Hinting runs started (one per new command id).
        hint_runs,
        /// Blocks of free memory hinted to the host, ever.
        hinted_blocks,
        /// Hinted blocks the driver holds now (returned by the host).
        hint_blocks_held,
        /// Hinted blocks freed when the host said done.
        hint_blocks_done,
        /// Hinted blocks freed to memory pressure by the shrinker.
        hint_blocks_shrunk,
        /// Runs ended early because the host left the hint ring full.
        hint_stalls,
    }
}

/// The driver's fault knobs, in its debugfs directory on kernels built for
/// fault injection (the debug kernel), beside the virtio layer's own.
#[derive(Default)]
pub(super) struct Knobs {
    /// While non-zero, the next free page hint command id goes out 2 bytes
    /// long instead of 4 (one per count), which QEMU answers by declaring
    /// its device broken.
    pub(super) short_hint_cmd: AtomicU32,
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl crate::kapi::debugfs::Knobs for Knobs {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'static CStr, &'a AtomicU32)) {
        f(c_str!("inject_short_hint_cmd"), &self.short_hint_cmd);
    }
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Messages the driver says once and then only counts: the first
/// occurrence logs; [`Notes::clear`] re-arms one (a new episode).
pub(super) struct Notes(pub(super) AtomicU32);

#[derive(Clone, Copy)]
#[repr(u32)]
pub(super) enum Note {
    /// Inflation is held back (no memory, or the guest floor).
    Short = 1 << 0,
    /// A message could not be sent to the host.
    SendError = 1 << 1,
    /// A free page hint could not be sent.
    HintError = 1 << 2,
    /// Inflation holds to protect the working set.
    WorkingSet = 1 << 3,
}

impl Notes {
    /// Whether this is the first `n` since it was last cleared.
    pub(super) fn first(&self, n: Note) -> bool {
        self.0.fetch_or(n as u32, Ordering::AcqRel) & n as u32 == 0
    }

    /// Re-arms `n`; returns whether it was set.
    pub(super) fn clear(&self, n: Note) -> bool {
        self.0.fetch_and(!(n as u32), Ordering::AcqRel) & n as u32 != 0
    }
}
