// SPDX-License-Identifier: GPL-2.0

//! Pure balloon logic: unit conversions, message batching, target handling
//! and the layout of what goes over the wire.
//!
//! Nothing here touches the kernel: every function is plain arithmetic on its
//! arguments, so the KUnit suite in `kunit/` compiles this file on its own and
//! tests it directly, including page sizes other than the running kernel's.
#![forbid(unsafe_code)]
#![allow(dead_code)]

/// The balloon protocol always speaks in 4 KiB frames, whatever the kernel's
/// page size (`VIRTIO_BALLOON_PFN_SHIFT`).
pub(crate) const PFN_SHIFT: u32 = 12;

/// Size of one balloon frame in bytes.
pub(crate) const FRAME_SIZE: usize = 1 << PFN_SHIFT;

/// Most frame numbers one inflate or deflate message may carry. Cloud
/// Hypervisor and Firecracker drop a descriptor with more.
pub(crate) const MAX_PFNS_PER_MSG: usize = 256;

/// Bytes of one message at its largest (little-endian `u32` frame numbers).
pub(crate) const MSG_BYTES: usize = MAX_PFNS_PER_MSG * 4;

/// Offsets of the little-endian fields in `struct virtio_balloon_config`.
pub(crate) mod config {
    /// `num_pages`: the host's target, in 4 KiB frames.
    pub(crate) const NUM_PAGES: usize = 0;
    /// `actual`: what the guest reports to hold, in 4 KiB frames.
    pub(crate) const ACTUAL: usize = 4;
    /// `free_page_hint_cmd_id` (with FREE_PAGE_HINT).
    pub(crate) const FREE_PAGE_HINT_CMD_ID: usize = 8;
    /// `poison_val` (with PAGE_POISON).
    pub(crate) const POISON_VAL: usize = 12;
}

/// Number of 4 KiB frames in one kernel page of `page_size` bytes.
///
/// Returns `None` for a page size that is not a power-of-two multiple of
/// 4 KiB: the protocol cannot describe such a page.
pub(crate) const fn frames_per_page(page_size: usize) -> Option<u32> {
    if page_size < FRAME_SIZE || !page_size.is_power_of_two() {
        return None;
    }
    Some((page_size >> PFN_SHIFT) as u32)
}

/// First 4 KiB frame number of the kernel page with page frame number `pfn`,
/// for pages of `page_size` bytes.
///
/// The result is truncated to 32 bits as the protocol requires; memory above
/// 16 TiB (with 4 KiB frames) cannot be ballooned. [`frame_fits`] tells
/// whether a page can be described without truncation.
pub(crate) const fn first_frame(pfn: u64, page_size: usize) -> u32 {
    let shift = page_size.trailing_zeros() - PFN_SHIFT;
    (pfn << shift) as u32
}

/// Whether every frame of kernel page `pfn` fits the protocol's 32-bit field.
pub(crate) const fn frame_fits(pfn: u64, page_size: usize) -> bool {
    let shift = page_size.trailing_zeros() - PFN_SHIFT;
    let frames = 1u64 << shift;
    match pfn.checked_mul(frames) {
        Some(first) => first + frames - 1 <= u32::MAX as u64,
        None => false,
    }
}

/// Rounds the host's target (in 4 KiB frames) to whole kernel pages.
///
/// The C driver rounds up: a host that asks for part of a kernel page gets
/// the whole page, and the reported `actual` then equals the rounded target
/// so the device sees the balloon settle instead of oscillating.
pub(crate) const fn round_target(frames: u32, frames_per_page: u32) -> u64 {
    let fpp = frames_per_page as u64;
    (frames as u64).div_ceil(fpp) * fpp
}

/// The signed distance, in 4 KiB frames, from what the balloon holds to the
/// host's (rounded) target. Positive: inflate; negative: deflate.
pub(crate) const fn towards_target(
    target_frames: u32,
    held_frames: u64,
    frames_per_page: u32,
) -> i64 {
    round_target(target_frames, frames_per_page) as i64 - held_frames as i64
}

/// How many kernel pages fit in one message of at most
/// [`MAX_PFNS_PER_MSG`] frames. At least one for any supported page size
/// up to 1 MiB.
pub(crate) const fn pages_per_msg(frames_per_page: u32) -> usize {
    MAX_PFNS_PER_MSG / frames_per_page as usize
}

/// Splits `pages` kernel pages into message-sized batches: returns the
/// number of pages in the next batch (0 when nothing is left).
pub(crate) const fn next_batch(pages: u64, frames_per_page: u32) -> usize {
    let per_msg = pages_per_msg(frames_per_page) as u64;
    if pages < per_msg {
        pages as usize
    } else {
        per_msg as usize
    }
}

/// Writes the 4 KiB frames of kernel page `pfn` as little-endian `u32`s
/// into `out`, starting at frame slot `slot`. Returns the next free slot,
/// or `None` if `out` has no room for the whole page.
pub(crate) fn encode_page_frames(
    out: &mut [u8],
    slot: usize,
    pfn: u64,
    page_size: usize,
) -> Option<usize> {
    let fpp = frames_per_page(page_size)? as usize;
    let end = slot.checked_add(fpp)?;
    if end * 4 > out.len() {
        return None;
    }
    let first = first_frame(pfn, page_size);
    for i in 0..fpp {
        let frame = first.wrapping_add(i as u32);
        let at = (slot + i) * 4;
        out[at..at + 4].copy_from_slice(&frame.to_le_bytes());
    }
    Some(end)
}

/// Names of the balloon feature bits, for messages and the sysfs readout.
pub(crate) const fn feature_name(bit: u32) -> &'static str {
    match bit {
        0 => "MUST_TELL_HOST",
        1 => "STATS_VQ",
        2 => "DEFLATE_ON_OOM",
        3 => "FREE_PAGE_HINT",
        4 => "PAGE_POISON",
        5 => "REPORTING",
        32 => "VERSION_1",
        33 => "ACCESS_PLATFORM",
        28 => "RING_INDIRECT_DESC",
        29 => "RING_EVENT_IDX",
        _ => "unknown",
    }
}

/// Displays the names of the feature bits set in a feature word, separated
/// by spaces (`MUST_TELL_HOST VERSION_1`); unknown bits show as `bit<N>`.
pub(crate) struct FeatureList(pub(crate) u64);

impl core::fmt::Display for FeatureList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for bit in 0..64u32 {
            if self.0 & (1u64 << bit) == 0 {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            match feature_name(bit) {
                "unknown" => write!(f, "bit{}", bit)?,
                name => f.write_str(name)?,
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}
