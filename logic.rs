// SPDX-License-Identifier: GPL-2.0

//! Pure balloon logic: unit conversions, message batching, target handling
//! and the layout of what goes over the wire.
//!
//! Nothing here touches the kernel: every function is plain arithmetic on its
//! arguments, so the KUnit suite in `kunit/` compiles this file on its own and
//! tests it directly, including page sizes other than the running kernel's.
#![forbid(unsafe_code)]

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

/// `frames_per_page` as a divisor: never zero, so no arithmetic here can
/// panic even if a caller passes 0 (the driver itself never does).
const fn divisor(frames_per_page: u32) -> u64 {
    if frames_per_page == 0 {
        1
    } else {
        frames_per_page as u64
    }
}

/// Whole kernel pages in `frames` 4 KiB frames.
pub(crate) const fn frames_to_pages(frames: u64, frames_per_page: u32) -> u64 {
    frames / divisor(frames_per_page)
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

/// The size of the smallest free block the driver reports to the host
/// (free page reporting): 2 MiB, a host's huge page.
pub(crate) const REPORTING_BLOCK_BYTES: usize = 2 << 20;

/// The page reporting order to ask for, with pages of `page_size` bytes;
/// `None` leaves the kernel's default (`pageblock_order`).
///
/// The default is 2 MiB with 4 KiB pages, but 32 MiB with 16 KiB pages and
/// 512 MiB with 64 KiB pages, and the kernel reports only while a zone has
/// 32 such blocks free above its low watermark: 1 GiB and 16 GiB there, so
/// smaller guests would never report. With pages larger than 4 KiB the
/// driver asks for 2 MiB blocks (the C driver does so with 64 KiB pages on
/// arm64, order 5, and keeps the default with 16 KiB pages).
pub(crate) const fn reporting_order(page_size: usize) -> Option<u32> {
    if page_size <= FRAME_SIZE || !page_size.is_power_of_two() || page_size >= REPORTING_BLOCK_BYTES
    {
        return None;
    }
    Some((REPORTING_BLOCK_BYTES / page_size).trailing_zeros())
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
    let fpp = divisor(frames_per_page);
    (frames as u64).div_ceil(fpp) * fpp
}

/// How many kernel pages fit in one message of at most
/// [`MAX_PFNS_PER_MSG`] frames. At least one for any supported page size
/// up to 1 MiB.
pub(crate) const fn pages_per_msg(frames_per_page: u32) -> usize {
    MAX_PFNS_PER_MSG / divisor(frames_per_page) as usize
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

/// Messages the driver puts on the inflate or deflate queue before one
/// kick. Each stays within [`MAX_PFNS_PER_MSG`]; batching several per kick
/// saves notifications and wake-ups, well within any ring (QEMU's has 128
/// entries).
pub(crate) const MSGS_PER_KICK: usize = 8;

/// Kernel pages moved in one round of inflation or deflation.
pub(crate) const fn pages_per_round(frames_per_page: u32) -> usize {
    MSGS_PER_KICK * pages_per_msg(frames_per_page)
}

/// 4 KiB frames in one MiB: what the C driver deflates per OOM
/// notification, and the unit of the deflate-on-OOM ramp ([`oom`]).
pub(crate) const OOM_FRAMES: u32 = 256;

/// Priority of the balloon on the OOM notifier chain, as the C driver.
pub(crate) const OOM_NOTIFY_PRIORITY: i32 = 80;

#[path = "logic/oom.rs"]
pub(crate) mod oom;

#[path = "logic/floor.rs"]
pub(crate) mod floor;

#[path = "logic/workingset.rs"]
pub(crate) mod workingset;

/// How long to wait before trying to allocate balloon pages again when
/// the guest's reserve holds inflation back, and the longest wait after
/// allocations failed (the C driver sleeps as long after each failure).
pub(crate) const ALLOC_RETRY_MS: u32 = 200;

/// The wait after the first of a run of failed allocation rounds.
pub(crate) const ALLOC_RETRY_FIRST_MS: u32 = 20;

/// How long to wait before the next inflation round after `failures`
/// rounds in a row (at least one) ran out of memory: 20 ms, then twice as
/// long each time, up to [`ALLOC_RETRY_MS`]. Allocation fails without
/// retrying (as in C) while reclaim, kswapd's included, is still freeing
/// page cache, which is soon there to take; the C driver's fixed 200 ms
/// leaves it idle meanwhile. Memory that stays short gets 200 ms again
/// after four quick tries.
pub(crate) const fn alloc_retry_ms(failures: u32) -> u32 {
    let doublings = if failures == 0 { 0 } else { failures - 1 };
    if doublings >= 4 {
        return ALLOC_RETRY_MS;
    }
    let ms = ALLOC_RETRY_FIRST_MS << doublings;
    if ms > ALLOC_RETRY_MS {
        ALLOC_RETRY_MS
    } else {
        ms
    }
}

/// The largest balloon, in 4 KiB frames, that the 32-bit `actual` field can
/// report, rounded down to whole kernel pages.
pub(crate) const fn max_frames(frames_per_page: u32) -> u64 {
    let fpp = divisor(frames_per_page);
    (u32::MAX as u64) / fpp * fpp
}

/// The balloon size, in 4 KiB frames, the driver aims for when the host
/// asks for `num_pages`: rounded up to whole kernel pages and capped at what
/// `actual` can report.
pub(crate) const fn target_frames(num_pages: u32, frames_per_page: u32) -> u64 {
    let t = round_target(num_pages, frames_per_page);
    let max = max_frames(frames_per_page);
    if t > max {
        max
    } else {
        t
    }
}

/// What one round of work does to move a balloon of `held` frames towards
/// `target` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// At the target.
    Done,
    /// Add this many kernel pages.
    Inflate(usize),
    /// Take out this many kernel pages.
    Deflate(usize),
}

/// The next round: at most [`pages_per_round`] kernel pages, in the
/// direction of the target.
pub(crate) const fn next_step(target: u64, held: u64, frames_per_page: u32) -> Step {
    let fpp = divisor(frames_per_page);
    let cap = pages_per_round(frames_per_page) as u64;
    if target > held {
        let pages = (target - held).div_ceil(fpp);
        Step::Inflate(if pages > cap { cap } else { pages } as usize)
    } else if target < held {
        let pages = (held - target).div_ceil(fpp);
        Step::Deflate(if pages > cap { cap } else { pages } as usize)
    } else {
        Step::Done
    }
}

/// Encodes the frames of kernel pages `pfns` into consecutive messages in
/// `out`: message `m` takes bytes `m * MSG_BYTES ..`, holds whole pages only
/// and at most [`MAX_PFNS_PER_MSG`] frames. Writes each message's length in
/// bytes to `lens` (0 for unused ones) and returns how many pages were
/// encoded: fewer than given when `out` or `lens` runs out of room.
pub(crate) fn encode_pages(
    pfns: impl Iterator<Item = u64>,
    page_size: usize,
    out: &mut [u8],
    lens: &mut [usize],
) -> usize {
    for l in lens.iter_mut() {
        *l = 0;
    }
    let Some(fpp) = frames_per_page(page_size) else {
        return 0;
    };
    let per_msg = pages_per_msg(fpp);
    if per_msg == 0 {
        return 0;
    }
    let mut done = 0usize;
    let mut pfns = pfns;
    // A message at a time, so that no page costs a division. The room is
    // checked before the next page is taken: the caller's iterator may
    // have side effects (enqueueing the page).
    for (m, len) in lens.iter_mut().enumerate() {
        let start = m * MSG_BYTES;
        let Some(msg) = out.get_mut(start..start + MSG_BYTES) else {
            break;
        };
        let mut slot = 0usize;
        for _ in 0..per_msg {
            let Some(pfn) = pfns.next() else {
                return done;
            };
            // A message holds `per_msg` whole pages: there is room.
            let Some(end) = encode_page_frames(msg, slot, pfn, page_size) else {
                return done;
            };
            slot = end;
            *len = slot * 4;
            done += 1;
        }
    }
    done
}

/// Statistics tags of the stats queue (`VIRTIO_BALLOON_S_*`).
pub(crate) mod stat {
    pub(crate) const SWAP_IN: u16 = 0;
    pub(crate) const SWAP_OUT: u16 = 1;
    pub(crate) const MAJFLT: u16 = 2;
    pub(crate) const MINFLT: u16 = 3;
    pub(crate) const MEMFREE: u16 = 4;
    pub(crate) const MEMTOT: u16 = 5;
    pub(crate) const AVAIL: u16 = 6;
    pub(crate) const CACHES: u16 = 7;
    pub(crate) const HTLB_PGALLOC: u16 = 8;
    pub(crate) const HTLB_PGFAIL: u16 = 9;
    pub(crate) const OOM_KILL: u16 = 10;
    pub(crate) const ALLOC_STALL: u16 = 11;
    pub(crate) const ASYNC_SCAN: u16 = 12;
    pub(crate) const DIRECT_SCAN: u16 = 13;
    pub(crate) const ASYNC_RECLAIM: u16 = 14;
    pub(crate) const DIRECT_RECLAIM: u16 = 15;
    /// Number of tags (`VIRTIO_BALLOON_S_NR`).
    pub(crate) const NR: usize = 16;
    /// The tags every host knows: 0 to 9, what the virtio spec listed and
    /// QEMU read before 9.2 (`stats_tags=10`). 10 to 15 came with Linux
    /// 6.12; the spec says a device ignores tags it does not know, but not
    /// every host does.
    pub(crate) const KNOWN_EVERYWHERE: u32 = 10;
    /// One entry: packed `{ le16 tag; le64 val; }`.
    pub(crate) const ENTRY_BYTES: usize = 10;
    /// The whole buffer.
    pub(crate) const BUF_BYTES: usize = NR * ENTRY_BYTES;
}

/// What the guest reports on the stats queue, as the kernel counts it:
/// events in events, memory in pages (converted to bytes when encoded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemSnapshot {
    /// VM event counters are available (CONFIG_VM_EVENT_COUNTERS).
    pub(crate) has_events: bool,
    pub(crate) swap_in_pages: u64,
    pub(crate) swap_out_pages: u64,
    pub(crate) major_faults: u64,
    pub(crate) minor_faults: u64,
    pub(crate) oom_kills: u64,
    /// Allocation stalls, summed over all zones.
    pub(crate) alloc_stalls: u64,
    pub(crate) async_scan_pages: u64,
    pub(crate) direct_scan_pages: u64,
    pub(crate) async_reclaim_pages: u64,
    pub(crate) direct_reclaim_pages: u64,
    /// Huge page allocations and failures (CONFIG_HUGETLB_PAGE only).
    pub(crate) hugetlb: Option<(u64, u64)>,
    pub(crate) free_pages: u64,
    pub(crate) total_pages: u64,
    pub(crate) available_pages: u64,
    pub(crate) cache_pages: u64,
}

/// Writes the stats entries for `s` whose tags are below `tags` into `out`
/// in the order and units of the 6.12 C driver (memory in bytes, events as
/// counts) and returns the number of bytes used (a multiple of
/// [`stat::ENTRY_BYTES`]); stops early if `out` is too small.
pub(crate) fn encode_stats(s: &MemSnapshot, page_shift: u32, tags: u32, out: &mut [u8]) -> usize {
    let unit = 1u64.checked_shl(page_shift).unwrap_or(0);
    let bytes = |pages: u64| pages.saturating_mul(unit);
    let mut entries = [(0u16, 0u64); stat::NR];
    let mut n = 0usize;
    let mut put = |tag: u16, val: u64| {
        if u32::from(tag) < tags && n < entries.len() {
            entries[n] = (tag, val);
            n += 1;
        }
    };
    if s.has_events {
        put(stat::SWAP_IN, bytes(s.swap_in_pages));
        put(stat::SWAP_OUT, bytes(s.swap_out_pages));
        put(stat::MAJFLT, s.major_faults);
        put(stat::MINFLT, s.minor_faults);
        put(stat::OOM_KILL, s.oom_kills);
        put(stat::ALLOC_STALL, s.alloc_stalls);
        put(stat::ASYNC_SCAN, bytes(s.async_scan_pages));
        put(stat::DIRECT_SCAN, bytes(s.direct_scan_pages));
        put(stat::ASYNC_RECLAIM, bytes(s.async_reclaim_pages));
        put(stat::DIRECT_RECLAIM, bytes(s.direct_reclaim_pages));
        if let Some((alloc, fail)) = s.hugetlb {
            put(stat::HTLB_PGALLOC, alloc);
            put(stat::HTLB_PGFAIL, fail);
        }
    }
    put(stat::MEMFREE, bytes(s.free_pages));
    put(stat::MEMTOT, bytes(s.total_pages));
    put(stat::AVAIL, bytes(s.available_pages));
    put(stat::CACHES, bytes(s.cache_pages));
    let mut used = 0usize;
    for &(tag, val) in &entries[..n] {
        let Some(slot) = out.get_mut(used..used + stat::ENTRY_BYTES) else {
            break;
        };
        slot[..2].copy_from_slice(&tag.to_le_bytes());
        slot[2..].copy_from_slice(&val.to_le_bytes());
        used += stat::ENTRY_BYTES;
    }
    used
}

/// The `poison_val` the driver writes with PAGE_POISON: 0 when freed pages
/// are zeroed (`init_on_free`), else the poison byte in every byte.
pub(crate) const fn poison_val(init_on_free: bool, poison_byte: u8) -> u32 {
    if init_on_free {
        0
    } else {
        u32::from_le_bytes([poison_byte; 4])
    }
}

#[path = "logic/hint.rs"]
pub(crate) mod hint;

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
        40 => "RING_RESET",
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
