// SPDX-License-Identifier: GPL-2.0

//! Working-set protection (opt-in, `protect_working_set`): inflation
//! holds while it evicts the guest's working set.
//!
//! The signal is the kernel's count of refaults it judged recent
//! (`workingset_activate_anon` and `_file` in /proc/vmstat): a page that
//! comes back soon after it was evicted, by the shadow entry's refault
//! distance against the working set's size (or, with the multi-gen LRU,
//! its generation), is activated and counted. Pages that only stream
//! through the cache (a file larger than the guest, read in a loop) come
//! back after more than the working set's size and are not counted; nor
//! is a first read. Refaults only count as recent near the point where the
//! working set stops fitting: a balloon that has gone far past it makes
//! refaults that are not (measured: a 400 MiB re-read loop squeezed into
//! 170 MiB refaults 70,000 pages a second, none of them recent). So with
//! the protection on, inflation that takes page cache goes a round at a
//! time, one every [`PACE_MS`], each followed by a look. A rate is
//! measured over [`WINDOW_MS`] at least: each CPU holds back part of its
//! count until a threshold or the kernel's once-a-second fold, and over a
//! shorter window that lump of real refaults would look like a burst.
//!
//! At [`THRESHOLD_BYTES_PER_S`] of those activations or more, inflation
//! holds, and gives back the page cache it took in the last [`GIVE_MS`]:
//! the refaults show an eviction only when the workload comes back to the
//! page, up to a pass of it later, and a working set that no longer fits
//! by a few MiB thrashes as if it did not fit at all, LRU being what it
//! is. While the activations go on, each look a second or more after the
//! last gives back as much again, but never more than the page cache
//! inflation took since it last knew the working set fitted (the end of
//! the last hold, or the start): the balloon never goes below that size
//! for the working set's sake. Inflation resumes after the activations
//! have been under the rate for the hold's quiet period: [`RETRY_MS`]
//! first, twice as long at each hold that follows, up to
//! [`MAX_QUIET_MS`], until inflation is idle (the target reached, or the
//! host asks for less). The host sees the balloon stay short of its
//! target. Each hold also halves the pace of the rounds that follow, down
//! to one every [`MAX_PACE_MS`]: a workload that has shown its working
//! set near the balloon's size is approached slower the next time, so
//! that its refaults show before the balloon has gone past it (a slow
//! workload, such as one on a loaded host, may take seconds to come back
//! to what was evicted).
//!
//! The refaults of the last rounds may show only once the balloon has
//! reached its target (a slow workload comes back to its pages up to a
//! pass later): inflation that took page cache goes on looking for
//! [`SETTLE_MS`] after its last round, every [`SETTLE_LOOK_MS`], and a
//! hold that starts then gives back as one during inflation would.

/// The pace of inflation rounds that take page cache.
pub(crate) const PACE_MS: u32 = 100;

/// The slowest pace, after holds.
pub(crate) const MAX_PACE_MS: u32 = 1600;

/// The shortest time over which a rate is measured: the kernel's vmstat
/// interval (`sysctl_stat_interval`, 1 s), by which every CPU's held-back
/// count reaches the global one.
pub(crate) const WINDOW_MS: i64 = 1000;

/// Activations at this rate (bytes of pages per second) or more mean the
/// working set is being evicted: 4 MiB/s. A guest at rest, or one whose
/// cache only streams, activates none.
pub(crate) const THRESHOLD_BYTES_PER_S: u64 = 4 << 20;

/// How often a hold looks at the activations, and the first hold's
/// quiet period.
pub(crate) const RETRY_MS: u32 = 1000;

/// How far back a new hold gives back the page cache inflation took: a
/// window, and up to two seconds more for the workload to come back to
/// what was evicted.
pub(crate) const GIVE_MS: i64 = 3000;

/// How long after the last round that took page cache its refaults are
/// still looked at once inflation has reached the target: as far back as
/// a hold gives back.
pub(crate) const SETTLE_MS: i64 = GIVE_MS;

/// How often they are looked at then (a rate still needs [`WINDOW_MS`]).
pub(crate) const SETTLE_LOOK_MS: u32 = 250;

/// The longest quiet period a hold needs.
pub(crate) const MAX_QUIET_MS: u32 = 64_000;

/// Inflation rounds remembered for giving back (at most one per
/// [`PACE_MS`] in [`GIVE_MS`], and a spare).
const ROUNDS: usize = (GIVE_MS / PACE_MS as i64) as usize + 1;

/// What inflation does after a look at the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Inflate.
    Go,
    /// Hold (`new`: a hold starts), giving back `give_back` kernel pages.
    Hold { new: bool, give_back: u64 },
}

/// The activation counter as last seen, the rounds inflated lately and
/// the state of a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Monitor {
    /// The count and the time (milliseconds, monotonic) of the last look.
    last: Option<(i64, u64)>,
    /// When the current hold started.
    held_since: Option<i64>,
    /// Since when the activations have been under the rate, in a hold.
    quiet_since: Option<i64>,
    /// The quiet period the current (or next) hold needs.
    quiet_ms: u32,
    /// Pages of recent inflation rounds that took page cache, and when
    /// they went, oldest first.
    rounds: [(i64, u64); ROUNDS],
    /// Pages of page cache inflation took since it last knew the working
    /// set fitted, less what holds gave back.
    taken: u64,
    /// What the hold gave back last, and when.
    last_give: (i64, u64),
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            last: None,
            held_since: None,
            quiet_since: None,
            quiet_ms: RETRY_MS,
            rounds: [(0, 0); ROUNDS],
            taken: 0,
            last_give: (0, 0),
        }
    }
}

impl Monitor {
    /// Whether inflation is held now.
    pub(crate) const fn held(&self) -> bool {
        self.held_since.is_some()
    }

    /// How long after a round that took page cache the next one goes:
    /// halved at each hold, as the quiet period doubles.
    pub(crate) fn pace_ms(&self) -> u32 {
        (self.quiet_ms / RETRY_MS)
            .saturating_mul(PACE_MS)
            .min(MAX_PACE_MS)
    }

    /// Inflation is idle, or the protection off: the next look starts a
    /// new measurement, the quiet period is the first's again, nothing is
    /// remembered to give back. Ends a hold; returns how long it lasted
    /// (ms), if there was one.
    pub(crate) fn reset(&mut self, now_ms: i64) -> Option<i64> {
        let held = self.held_since.map(|t| now_ms.saturating_sub(t).max(0));
        *self = Self::default();
        held
    }

    /// An inflation round that took page cache handed `pages` kernel
    /// pages to the host at `now_ms`.
    pub(crate) fn inflated(&mut self, now_ms: i64, pages: u64) {
        self.rounds.rotate_left(1);
        self.rounds[ROUNDS - 1] = (now_ms, pages);
        self.taken = self.taken.saturating_add(pages);
    }

    /// Inflation has reached the target at `now_ms`: whether a round that
    /// took page cache went recently enough that its refaults are still
    /// looked at. Not in a hold (the host asked for no more than the
    /// balloon holds: the hold is over).
    pub(crate) fn settling(&self, now_ms: i64) -> bool {
        let (when, pages) = self.rounds[ROUNDS - 1];
        !self.held() && pages != 0 && now_ms.saturating_sub(when) < SETTLE_MS
    }

    /// Gives back `pages`, at most what inflation took; returns how many.
    fn give(&mut self, now_ms: i64, pages: u64) -> u64 {
        let pages = pages.min(self.taken);
        self.taken -= pages;
        self.last_give = (now_ms, pages);
        pages
    }

    /// Pages of the rounds in the [`GIVE_MS`] before `now_ms`; forgets
    /// every round.
    fn take_recent(&mut self, now_ms: i64) -> u64 {
        let mut sum = 0u64;
        for r in self.rounds.iter_mut() {
            if r.1 != 0 && now_ms.saturating_sub(r.0) <= GIVE_MS {
                sum = sum.saturating_add(r.1);
            }
            *r = (0, 0);
        }
        sum
    }

    /// Looks at `activations` (the kernel's count, in pages of
    /// `page_size` bytes) at `now_ms`. Returns the verdict, and how long
    /// the hold had lasted if this look ends one.
    pub(crate) fn look(
        &mut self,
        now_ms: i64,
        activations: u64,
        page_size: usize,
    ) -> (Verdict, Option<i64>) {
        let Some((then, count)) = self.last else {
            self.last = Some((now_ms, activations));
            return (Verdict::Go, None);
        };
        let elapsed = now_ms.saturating_sub(then);
        if elapsed < WINDOW_MS {
            // Too short to measure: the count keeps accumulating.
            let verdict = if self.held() {
                Verdict::Hold {
                    new: false,
                    give_back: 0,
                }
            } else {
                Verdict::Go
            };
            return (verdict, None);
        }
        self.last = Some((now_ms, activations));
        let bytes = activations
            .wrapping_sub(count)
            .saturating_mul(page_size as u64);
        // bytes / (elapsed / 1000) >= threshold, without dividing by 0.
        let thrashing = bytes.saturating_mul(1000)
            >= THRESHOLD_BYTES_PER_S.saturating_mul(elapsed.max(1) as u64);
        let hold = Verdict::Hold {
            new: false,
            give_back: 0,
        };
        match self.held_since {
            None if thrashing => {
                self.held_since = Some(now_ms);
                self.quiet_since = None;
                let recent = self.take_recent(now_ms);
                let give_back = self.give(now_ms, recent);
                (
                    Verdict::Hold {
                        new: true,
                        give_back,
                    },
                    None,
                )
            }
            None => (Verdict::Go, None),
            Some(_) if thrashing => {
                self.quiet_since = None;
                // Still thrashing a second after the last give-back: as much
                // again (at least the latest round), within what was taken.
                let (when, last) = self.last_give;
                if now_ms.saturating_sub(when) < RETRY_MS as i64 {
                    return (hold, None);
                }
                let again = last.max(self.rounds[ROUNDS - 1].1);
                let give_back = self.give(now_ms, again);
                (
                    Verdict::Hold {
                        new: false,
                        give_back,
                    },
                    None,
                )
            }
            Some(start) => {
                let quiet = *self.quiet_since.get_or_insert(then);
                if now_ms.saturating_sub(quiet) < self.quiet_ms as i64 {
                    return (hold, None);
                }
                // Over: the working set fits at this size. Inflation goes on
                // at half the pace, and the next hold (before inflation is
                // idle) waits twice as long.
                self.held_since = None;
                self.quiet_since = None;
                self.taken = 0;
                self.quiet_ms = self.quiet_ms.saturating_mul(2).min(MAX_QUIET_MS);
                (Verdict::Go, Some(now_ms.saturating_sub(start).max(0)))
            }
        }
    }
}
