// SPDX-License-Identifier: GPL-2.0

//! The guest floor: how much memory inflation leaves the guest.
//!
//! Inflation stops while the guest's available memory (`MemAvailable`,
//! `si_mem_available`) is at or below the floor: taking the guest below
//! its watermarks gets processes OOM-killed and can panic it, and the host
//! only sees a balloon that stops short of a target the guest could not
//! meet anyway. The floor is an operator's setting (`floor_mib`) in MiB:
//! what a guest must keep is set by what its workload needs, which does
//! not grow with memory hot-plug or a share of RAM. 0, the default, is the
//! automatic floor: 1/32 of RAM, at least 4 MiB.
//!
//! Once inflation has stopped at the floor it resumes only when the guest
//! has a margin more than the floor available ([`resume_at`]), not as soon
//! as a page is freed: a guest sitting at the floor whose cache breathes
//! by a few pages would otherwise hold and inflate by turns at every retry.

/// The default `floor_mib`: the automatic floor.
pub(crate) const DEFAULT_MIB: u32 = 0;
/// The largest `floor_mib` the parameter takes (16 TiB).
pub(crate) const LIMIT_MIB: u32 = 1 << 24;

/// The automatic floor is this fraction of the guest's RAM ...
pub(crate) const AUTO_DIVISOR: u64 = 32;
/// ... and at least this many bytes.
pub(crate) const AUTO_MIN_BYTES: u64 = 4 << 20;

/// The hysteresis margin is this fraction of the floor ...
pub(crate) const MARGIN_DIVISOR: u64 = 4;
/// ... at least this many bytes ...
pub(crate) const MARGIN_MIN_BYTES: u64 = 1 << 20;
/// ... and at most this many.
pub(crate) const MARGIN_MAX_BYTES: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

const fn pages_of(bytes: u64, page_size: usize) -> u64 {
    let size = if page_size == 0 { 1 } else { page_size as u64 };
    bytes.div_ceil(size)
}

/// The floor in kernel pages of `page_size` bytes, for a guest of `total`
/// pages of RAM, when `floor_mib` is set to `mib` (0: automatic).
pub(crate) const fn floor_pages(mib: u32, total: u64, page_size: usize) -> u64 {
    if mib != 0 {
        return pages_of(mib as u64 * MIB, page_size);
    }
    let min = pages_of(AUTO_MIN_BYTES, page_size);
    let share = total / AUTO_DIVISOR;
    if share > min {
        share
    } else {
        min
    }
}

/// Available pages at which inflation held at a floor of `floor` pages
/// resumes: the floor and a quarter of it again (1 to 64 MiB).
pub(crate) const fn resume_at(floor: u64, page_size: usize) -> u64 {
    let lo = pages_of(MARGIN_MIN_BYTES, page_size);
    let hi = pages_of(MARGIN_MAX_BYTES, page_size);
    let quarter = floor / MARGIN_DIVISOR;
    let margin = if quarter < lo {
        lo
    } else if quarter > hi {
        hi
    } else {
        quarter
    };
    floor.saturating_add(margin)
}

/// Kernel pages inflation may take when the guest has `available` pages
/// available and a floor of `floor` pages; `held` says whether inflation
/// is stopped at the floor now (then it resumes only at [`resume_at`]).
pub(crate) const fn budget(available: u64, floor: u64, held: bool, page_size: usize) -> u64 {
    if held && available < resume_at(floor, page_size) {
        0
    } else {
        available.saturating_sub(floor)
    }
}
