// SPDX-License-Identifier: GPL-2.0

//! The cases for the driver's pure logic (`logic.rs`): page and frame
//! arithmetic, the wire formats, the size-following rounds, the
//! deflate-on-OOM ramp, the stats and the free page hint arithmetic.

use super::*;

const KIB: usize = 1024;

// ---------------------------------------------------------------------------
// The test cases.

pub(crate) fn frames_per_page_by_page_size() {
    check_eq!(frames_per_page(4 * KIB), Some(1));
    check_eq!(frames_per_page(16 * KIB), Some(4));
    check_eq!(frames_per_page(64 * KIB), Some(16));
    check_eq!(frames_per_page(256 * KIB), Some(64));
    // Not describable in 4 KiB frames.
    check_eq!(frames_per_page(2 * KIB), None);
    check_eq!(frames_per_page(12 * KIB), None);
    check_eq!(frames_per_page(0), None);
    // The running kernel's own page size is supported.
    check!(frames_per_page(kernel::page::PAGE_SIZE).is_some());
}

pub(crate) fn reporting_asks_for_2_mib_blocks_with_large_pages() {
    // 4 KiB pages: the kernel's default (pageblock_order, 2 MiB) stays.
    check_eq!(reporting_order(4 * KIB), None);
    // 16 KiB: order 7; 64 KiB: order 5 (what the C driver asks for).
    check_eq!(reporting_order(16 * KIB), Some(7));
    check_eq!(reporting_order(64 * KIB), Some(5));
    check_eq!(
        reporting_order(kernel::page::PAGE_SIZE).map_or(2 << 20, |o| kernel::page::PAGE_SIZE << o),
        2 << 20
    );
    // Pages of 2 MiB or more, or not a power of two: the default.
    check_eq!(reporting_order(2 << 20), None);
    check_eq!(reporting_order(12 * KIB), None);
}

pub(crate) fn first_frame_of_a_page() {
    check_eq!(first_frame(0, 4 * KIB), 0);
    check_eq!(first_frame(0x1234, 4 * KIB), 0x1234);
    // With 64 KiB pages, page N starts at frame 16 N.
    check_eq!(first_frame(3, 64 * KIB), 48);
    check_eq!(first_frame(0x10_0000, 16 * KIB), 0x40_0000);
}

pub(crate) fn frames_beyond_32_bits_are_detected() {
    check!(frame_fits(u32::MAX as u64, 4 * KIB));
    check!(!frame_fits(u32::MAX as u64 + 1, 4 * KIB));
    // With 64 KiB pages, the last page that fits ends at frame 2^32 - 1.
    check!(frame_fits((1u64 << 28) - 1, 64 * KIB));
    check!(!frame_fits(1u64 << 28, 64 * KIB));
    check!(!frame_fits(u64::MAX, 64 * KIB));
}

pub(crate) fn targets_round_up_to_whole_pages() {
    check_eq!(round_target(0, 1), 0);
    check_eq!(round_target(7, 1), 7);
    check_eq!(round_target(1, 16), 16);
    check_eq!(round_target(16, 16), 16);
    check_eq!(round_target(17, 16), 32);
    // The largest target the host can express does not overflow.
    check_eq!(round_target(u32::MAX, 16), (u32::MAX as u64 + 1));
    check_eq!(round_target(u32::MAX, 1), u32::MAX as u64);
}

pub(crate) fn batches_hold_at_most_256_frames() {
    check_eq!(pages_per_msg(1), 256);
    check_eq!(pages_per_msg(16), 16);
    check_eq!(pages_per_msg(64), 4);
    for fpp in [1u32, 4, 16, 64] {
        check!(pages_per_msg(fpp) * fpp as usize <= MAX_PFNS_PER_MSG);
    }
}

pub(crate) fn page_frames_encode_little_endian() {
    let mut buf = [0u8; 16];
    // One 16 KiB page is four consecutive frames.
    check_eq!(encode_page_frames(&mut buf, 0, 0x0102, 16 * KIB), Some(4));
    check_eq!(buf[0..4], [0x08, 0x04, 0, 0]);
    check_eq!(buf[4..8], [0x09, 0x04, 0, 0]);
    check_eq!(buf[12..16], [0x0b, 0x04, 0, 0]);
    // No room for a whole page: nothing is written.
    let mut small = [0xffu8; 8];
    check_eq!(encode_page_frames(&mut small, 1, 7, 4 * KIB), Some(2));
    check_eq!(small[4..8], [7, 0, 0, 0]);
    check_eq!(encode_page_frames(&mut small, 2, 7, 4 * KIB), None);
    check_eq!(encode_page_frames(&mut small, 0, 7, 16 * KIB), None);
}

pub(crate) fn feature_names_are_listed() {
    let mut out = [0u8; 64];
    let mut w = SliceWriter {
        buf: &mut out,
        len: 0,
    };
    check!(core::fmt::write(
        &mut w,
        format_args!("{}", FeatureList((1 << 0) | (1 << 2) | (1u64 << 32)))
    )
    .is_ok());
    let len = w.len;
    check_eq!(&out[..len], b"MUST_TELL_HOST DEFLATE_ON_OOM VERSION_1");
    let mut w = SliceWriter {
        buf: &mut out,
        len: 0,
    };
    check!(core::fmt::write(&mut w, format_args!("{}", FeatureList(1 << 41))).is_ok());
    let len = w.len;
    check_eq!(&out[..len], b"bit41");
}

pub(crate) fn targets_are_capped_to_what_actual_can_report() {
    check_eq!(target_frames(0, 1), 0);
    check_eq!(target_frames(5, 16), 16);
    check_eq!(target_frames(u32::MAX, 1), u32::MAX as u64);
    // 64 KiB pages: the largest whole-page count that fits in 32 bits,
    // not the rounded-up 2^32.
    check_eq!(target_frames(u32::MAX, 16), 0xffff_fff0);
    check_eq!(max_frames(16), 0xffff_fff0);
    check!(target_frames(u32::MAX - 3, 16) <= u32::MAX as u64);
}

pub(crate) fn rounds_move_towards_the_target() {
    check_eq!(pages_per_round(1), 8 * 256);
    check_eq!(pages_per_round(16), 8 * 16);
    check_eq!(next_step(0, 0, 1), Step::Done);
    check_eq!(next_step(1000, 0, 1), Step::Inflate(1000));
    check_eq!(next_step(1 << 20, 0, 1), Step::Inflate(2048));
    check_eq!(next_step(0, 512, 1), Step::Deflate(512));
    check_eq!(next_step(100, 1 << 20, 1), Step::Deflate(2048));
    // 64 KiB pages: frames come in sixteens.
    check_eq!(next_step(16 * 1000, 0, 16), Step::Inflate(128));
    check_eq!(next_step(16, 0, 16), Step::Inflate(1));
    check_eq!(next_step(16, 48, 16), Step::Deflate(2));
    // 17 frames with 64 KiB pages is two pages (32 frames): one more page.
    check_eq!(next_step(round_target(17, 16), 16, 16), Step::Inflate(1));
    check_eq!(next_step(round_target(17, 16), 32, 16), Step::Done);
    check_eq!(frames_to_pages(48, 16), 3);
    check_eq!(frames_to_pages(47, 16), 2);
    // A zero page ratio (never produced by the driver) cannot panic.
    check_eq!(frames_to_pages(5, 0), 5);
    check_eq!(next_step(5, 0, 0), Step::Inflate(5));
    check_eq!(round_target(7, 0), 7);
}

pub(crate) fn pages_fill_messages_of_at_most_256_frames() {
    let mut out = [0u8; MSGS_PER_KICK * MSG_BYTES];
    let mut lens = [7usize; MSGS_PER_KICK];
    check_eq!(encode_pages(0..300u64, 4 * KIB, &mut out, &mut lens), 300);
    check_eq!(lens[0], 1024);
    check_eq!(lens[1], 44 * 4);
    check!(lens[2..].iter().all(|&l| l == 0));
    check_eq!(out[MSG_BYTES..MSG_BYTES + 4], 256u32.to_le_bytes());
    // 64 KiB pages: 16 whole pages (256 frames) per message.
    let mut lens = [0usize; MSGS_PER_KICK];
    check_eq!(encode_pages(0..20u64, 64 * KIB, &mut out, &mut lens), 20);
    check_eq!(lens[0], 1024);
    check_eq!(lens[1], 4 * 16 * 4);
    check_eq!(out[MSG_BYTES..MSG_BYTES + 4], 256u32.to_le_bytes());
    // Out of room: the iterator is not pulled past what fits, because
    // pulling a page enqueues it in the driver.
    let mut one = [0u8; MSG_BYTES];
    let mut lens = [0usize; 1];
    let mut pulled = 0u32;
    let pfns = core::iter::from_fn(|| {
        pulled += 1;
        Some(u64::from(pulled))
    });
    check_eq!(encode_pages(pfns, 4 * KIB, &mut one, &mut lens), 256);
    check_eq!(pulled, 256);
    check_eq!(lens[0], MSG_BYTES);
}

pub(crate) fn oom_deflates_one_mib_counted_in_kernel_pages() {
    // The notifier adds kernel pages to the OOM killer's count: 256 4 KiB
    // frames are 256 pages of 4 KiB, 16 of 64 KiB, and at least one page
    // when a page is larger than 1 MiB.
    let full = u64::MAX;
    check_eq!(oom::pages(1, 1, full), 256);
    check_eq!(oom::pages(1, 4, full), 64);
    check_eq!(oom::pages(1, 16, full), 16);
    check_eq!(oom::pages(1, 512, full), 1);
    // What it frees, in frames, is pages times the ratio: 1 MiB.
    check_eq!(oom::pages(1, 16, full) * 16, 256);
    check_eq!(oom::pages(64, 16, full) * 16, 64 * 256);
    // Never more than the balloon holds, in whole kernel pages.
    check_eq!(oom::pages(64, 1, 1000), 1000);
    check_eq!(oom::pages(64, 16, 40), 2);
    check_eq!(oom::pages(1, 16, 0), 0);
}

pub(crate) fn allocation_retries_start_quick_and_back_off_to_200_ms() {
    let waits: [u32; 7] = core::array::from_fn(|i| alloc_retry_ms(i as u32 + 1));
    check_eq!(waits, [20, 40, 80, 160, 200, 200, 200]);
    check_eq!(alloc_retry_ms(u32::MAX), ALLOC_RETRY_MS);
    // Called with 0 (not a failure), still a wait, never 0 ms.
    check_eq!(alloc_retry_ms(0), ALLOC_RETRY_FIRST_MS);
}

pub(crate) fn oom_ramp_doubles_within_a_burst_up_to_the_cap() {
    let mut r = oom::Ramp::new();
    let mut steps = [0u32; 10];
    for (i, s) in steps.iter_mut().enumerate() {
        // Notifications 5 ms apart: one burst.
        *s = r.step(1000 + 5 * i as i64, 64, 1000);
    }
    check_eq!(steps, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]);
    // A cap that is not a power of two is reached, not passed.
    let mut r = oom::Ramp::new();
    let got: [u32; 5] = core::array::from_fn(|i| r.step(i as i64, 5, 1000));
    check_eq!(got, [1, 2, 4, 5, 5]);
    // A cap lowered during a burst applies at once.
    check_eq!(r.step(10, 2, 1000), 2);
    // Cap 1 is the C driver: 1 MiB each time; 0 is taken as 1.
    let mut r = oom::Ramp::new();
    for t in 0..5 {
        check_eq!(r.step(t, 1, 1000), 1);
        check_eq!(r.step(t, 0, 1000), 1);
    }
}

pub(crate) fn oom_ramp_overshoot_stays_below_the_need_and_the_cap() {
    // A process short of `need` MiB gets notifications until the steps
    // add up to it; what they give beyond it is less than the last step,
    // below the need and below the cap.
    for cap in [1u32, 2, 3, 16, 64, 1024] {
        for need in [1u32, 2, 3, 7, 100, 255, 256, 257, 1000, 4096] {
            let mut r = oom::Ramp::new();
            let (mut given, mut calls) = (0u32, 0u32);
            while given < need {
                given += r.step(calls as i64, cap, 1000);
                calls += 1;
            }
            let over = given - need;
            check!(over < need);
            check!(over < cap);
            // Far fewer notifications than the C driver's `need`, once
            // the cap allows it.
            check!(calls <= 12 + need / cap.max(1));
        }
    }
}

pub(crate) fn oom_ramp_starts_again_after_a_quiet_period() {
    let mut r = oom::Ramp::new();
    check!(!r.in_burst(0, 1000));
    check_eq!(r.step(0, 64, 1000), 1);
    check!(r.in_burst(999, 1000));
    check_eq!(r.step(999, 64, 1000), 2);
    check_eq!(r.step(1500, 64, 1000), 4);
    // A whole quiet period since the last notification: 1 MiB again.
    check!(!r.in_burst(2500, 1000));
    check_eq!(r.step(2500, 64, 1000), 1);
    check_eq!(r.step(2501, 64, 1000), 2);
    // A shorter quiet period ends bursts sooner.
    check_eq!(r.step(2600, 64, 50), 1);
    // A clock that seems to go back starts a new burst.
    check_eq!(r.step(2700, 64, 1000), 2);
    check_eq!(r.step(100, 64, 1000), 1);
}

pub(crate) fn stats_are_packed_le16_tags_and_le64_values() {
    let snap = MemSnapshot {
        has_events: true,
        swap_in_pages: 1,
        swap_out_pages: 2,
        major_faults: 3,
        minor_faults: 4,
        oom_kills: 5,
        alloc_stalls: 6,
        async_scan_pages: 7,
        direct_scan_pages: 8,
        async_reclaim_pages: 9,
        direct_reclaim_pages: 10,
        hugetlb: None,
        free_pages: 100,
        total_pages: 1000,
        available_pages: 200,
        cache_pages: 50,
    };
    let mut out = [0u8; stat::BUF_BYTES];
    let used = encode_stats(&snap, 12, 16, &mut out);
    // 10 event entries and 4 memory entries, no hugetlb ones.
    check_eq!(used, 14 * stat::ENTRY_BYTES);
    fn entry(out: &[u8], i: usize) -> (u16, u64) {
        let e = &out[i * 10..i * 10 + 10];
        (
            u16::from_le_bytes([e[0], e[1]]),
            u64::from_le_bytes([e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]]),
        )
    }
    // Swap in pages become bytes; faults stay counts.
    check_eq!(entry(&out, 0), (stat::SWAP_IN, 4096));
    check_eq!(entry(&out, 2), (stat::MAJFLT, 3));
    check_eq!(entry(&out, 3), (stat::MINFLT, 4));
    check_eq!(entry(&out, 4), (stat::OOM_KILL, 5));
    check_eq!(entry(&out, 5), (stat::ALLOC_STALL, 6));
    check_eq!(entry(&out, 9), (stat::DIRECT_RECLAIM, 10 * 4096));
    check_eq!(entry(&out, 10), (stat::MEMFREE, 100 * 4096));
    check_eq!(entry(&out, 11), (stat::MEMTOT, 1000 * 4096));
    check_eq!(entry(&out, 12), (stat::AVAIL, 200 * 4096));
    check_eq!(entry(&out, 13), (stat::CACHES, 50 * 4096));
    // With hugetlb counters: 16 entries, all tags distinct; 64 KiB pages.
    let snap = MemSnapshot {
        hugetlb: Some((11, 12)),
        ..snap
    };
    check_eq!(encode_stats(&snap, 16, 16, &mut out), stat::BUF_BYTES);
    check_eq!(entry(&out, 10), (stat::HTLB_PGALLOC, 11));
    check_eq!(entry(&out, 15), (stat::CACHES, 50 << 16));
    // Without VM events: the memory figures only. A buffer too small for
    // all entries takes what fits; huge values saturate.
    let snap = MemSnapshot {
        has_events: false,
        total_pages: u64::MAX,
        ..snap
    };
    let mut small = [0u8; 25];
    check_eq!(encode_stats(&snap, 12, 16, &mut small), 20);
    check_eq!(&small[12..20], &u64::MAX.to_le_bytes());
}

pub(crate) fn stats_for_older_hosts_carry_tags_0_to_9_only() {
    let snap = MemSnapshot {
        has_events: true,
        swap_in_pages: 1,
        swap_out_pages: 2,
        major_faults: 3,
        minor_faults: 4,
        oom_kills: 5,
        alloc_stalls: 6,
        async_scan_pages: 7,
        direct_scan_pages: 8,
        async_reclaim_pages: 9,
        direct_reclaim_pages: 10,
        hugetlb: Some((11, 12)),
        free_pages: 100,
        total_pages: 1000,
        available_pages: 200,
        cache_pages: 50,
    };
    let mut out = [0u8; stat::BUF_BYTES];
    let used = encode_stats(&snap, 12, stat::KNOWN_EVERYWHERE, &mut out);
    check_eq!(used, 10 * stat::ENTRY_BYTES);
    // Each of tags 0 to 9 once, and nothing after them.
    let mut seen = [0u32; stat::NR];
    for e in out[..used].chunks(stat::ENTRY_BYTES) {
        let tag = u16::from_le_bytes([e[0], e[1]]) as usize;
        check!(tag < 10);
        seen[tag] += 1;
    }
    check_eq!(&seen[..10], &[1u32; 10]);
    check!(out[used..].iter().all(|&b| b == 0));
    // Without hugetlb counters: 8 entries; all 16 tags: 16.
    let snap = MemSnapshot {
        hugetlb: None,
        ..snap
    };
    check_eq!(encode_stats(&snap, 12, 10, &mut out), 8 * stat::ENTRY_BYTES);
    check_eq!(encode_stats(&snap, 12, 11, &mut out), 9 * stat::ENTRY_BYTES);
}

pub(crate) fn the_automatic_floor_is_a_32nd_of_ram_and_at_least_4_mib() {
    use floor::*;
    // 512 MiB of 4 KiB pages: the floor is 1/32 (16 MiB = 4096 pages).
    let total = 512 * 256;
    check_eq!(floor_pages(0, total, 4 * KIB), 4096);
    check_eq!(budget(10_000, 4096, false, 4 * KIB), 10_000 - 4096);
    check_eq!(budget(4096, 4096, false, 4 * KIB), 0);
    check_eq!(budget(100, 4096, false, 4 * KIB), 0);
    // Small guests keep at least 4 MiB; 64 KiB pages count in their size.
    check_eq!(floor_pages(0, 32 * 256, 4 * KIB), 1024);
    check_eq!(floor_pages(0, 64, 64 * KIB), 64);
    check_eq!(floor_pages(0, u64::MAX, 0), u64::MAX / 32);
    check_eq!(
        budget(u64::MAX, u64::MAX / 32, false, 0),
        u64::MAX - u64::MAX / 32
    );
}

pub(crate) fn a_floor_in_mib_counts_in_kernel_pages() {
    use floor::*;
    // Whatever the RAM: 100 MiB are 25600 4 KiB pages, 6400 of 16 KiB,
    // 1600 of 64 KiB; a part of a page counts as a whole one.
    check_eq!(floor_pages(100, 1 << 30, 4 * KIB), 25_600);
    check_eq!(floor_pages(100, 8, 16 * KIB), 6400);
    check_eq!(floor_pages(100, 0, 64 * KIB), 1600);
    check_eq!(floor_pages(1, 0, 2 * 1024 * KIB), 1);
    check_eq!(floor_pages(LIMIT_MIB, 0, 4 * KIB), (LIMIT_MIB as u64) << 8);
}

pub(crate) fn held_at_the_floor_inflation_resumes_a_margin_above_it() {
    use floor::*;
    // A 64 MiB floor of 4 KiB pages: the margin is a quarter, 16 MiB.
    let floor = 64 * 256;
    check_eq!(resume_at(floor, 4 * KIB), 80 * 256);
    // Not held: everything above the floor may go.
    check_eq!(budget(floor + 10, floor, false, 4 * KIB), 10);
    // Held: a few freed pages stay with the guest ...
    check_eq!(budget(floor + 10, floor, true, 4 * KIB), 0);
    check_eq!(budget(80 * 256 - 1, floor, true, 4 * KIB), 0);
    // ... until the margin is there; then down to the floor again.
    check_eq!(budget(80 * 256, floor, true, 4 * KIB), 16 * 256);
    // The margin is at least 1 MiB and at most 64 MiB.
    check_eq!(resume_at(256, 4 * KIB), 512);
    check_eq!(resume_at(1 << 20, 4 * KIB), (1 << 20) + 64 * 256);
    check_eq!(resume_at(1, 64 * KIB), 17);
    check_eq!(resume_at(u64::MAX, 4 * KIB), u64::MAX);
    check_eq!(budget(u64::MAX - 1, u64::MAX - 1, true, 4 * KIB), 0);
}

pub(crate) fn poison_val_tells_the_host_what_freed_pages_hold() {
    check_eq!(poison_val(true, 0xaa), 0);
    check_eq!(poison_val(false, PAGE_POISON_BYTE as u8), 0xaaaa_aaaa);
}

pub(crate) fn hint_cmd_ids_drive_runs_stops_and_done() {
    use logic::hint::{action, keep_going, Action, CMD_ID_DONE, CMD_ID_STOP};
    // What QEMU does during a migration: a new id per bitmap sync, a stop
    // before each sync, done at the end (or on cancel).
    let mut active = CMD_ID_STOP;
    check_eq!(action(CMD_ID_STOP, active), Action::Nothing);
    check_eq!(action(2, active), Action::Start(2));
    active = 2;
    check!(keep_going(active, 2));
    check!(!keep_going(active, CMD_ID_STOP));
    check!(!keep_going(active, 3));
    check!(!keep_going(active, CMD_ID_DONE));
    // A repeated id (another config interrupt) does not start a second run.
    check_eq!(action(2, active), Action::Nothing);
    check_eq!(action(CMD_ID_STOP, active), Action::Nothing);
    check_eq!(action(3, active), Action::Start(3));
    active = 3;
    check_eq!(action(CMD_ID_DONE, active), Action::ReturnAll);
    // Done again, or done before any run, only gives back what is held.
    check_eq!(action(CMD_ID_DONE, CMD_ID_STOP), Action::ReturnAll);
    // Any other value from the host is just an id; wrap-around included.
    check_eq!(action(u32::MAX, active), Action::Start(u32::MAX));
    check_eq!(action(2, u32::MAX), Action::Start(2));
}

pub(crate) fn shrinker_gives_back_whole_hint_blocks() {
    use logic::hint::{block_pages, blocks_for};
    // MAX_PAGE_ORDER blocks: 4 MiB with 4 KiB pages.
    check_eq!(block_pages(10), 1024);
    check_eq!(blocks_for(0, 10), 0);
    check_eq!(blocks_for(1, 10), 1);
    check_eq!(blocks_for(1024, 10), 1);
    check_eq!(blocks_for(1025, 10), 2);
    check_eq!(blocks_for(128, 10), 1);
    check_eq!(blocks_for(u64::MAX, 10), u64::MAX / 1024 + 1);
    check_eq!(block_pages(0), 1);
    check_eq!(blocks_for(7, 0), 7);
    check_eq!(block_pages(200), 1 << 62);
    // A block is one scatterlist entry: its length must fit in 32 bits.
    check!(
        (kernel::page::PAGE_SIZE as u64) * block_pages(bindings::MAX_PAGE_ORDER)
            <= u64::from(u32::MAX)
    );
}

/// Formats into a fixed buffer (the feature names case).
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

pub(crate) fn working_set_refaults_hold_inflation_until_a_quiet_second() {
    use workingset::*;
    const HOLD: Verdict = Verdict::Hold {
        new: false,
        give_back: 0,
    };
    let mut m = Monitor::default();
    // 4 MiB/s of 4 KiB pages is 1024 pages a second.
    check_eq!(m.look(0, 5000, 4 * KIB), (Verdict::Go, None));
    // Less than a second is too short to measure (each CPU holds part of
    // its count back for up to a second): the count accumulates.
    check_eq!(m.look(500, 9000, 4 * KIB), (Verdict::Go, None));
    check_eq!(m.look(1000, 6023, 4 * KIB), (Verdict::Go, None));
    check!(!m.held());
    // Rounds that took page cache: 2048 pages at -1500 (more than 3 s
    // before the hold), 0, 1500 and 1800 ms.
    m.inflated(-1500, 2048);
    m.inflated(0, 2048);
    m.inflated(1500, 2048);
    m.inflated(1800, 2048);
    // At the target, the last round's refaults are looked at for 3 s.
    check!(m.settling(1800));
    check!(m.settling(4799));
    check!(!m.settling(4800));
    // 1024 pages in a second: at the rate; held, and the rounds of the
    // last three seconds go back.
    check_eq!(
        m.look(2000, 6023 + 1024, 4 * KIB),
        (
            Verdict::Hold {
                new: true,
                give_back: 6144
            },
            None
        )
    );
    check!(m.held());
    // Held at the target: the host asks for no more, nothing to look at.
    check!(!m.settling(2000));
    // Still climbing, but too soon after to measure: nothing more back.
    check_eq!(m.look(2500, 20_000, 4 * KIB), (HOLD, None));
    // A second after the give-back: as much again, but only what is left
    // of what inflation took since it knew the working set fitted.
    check_eq!(
        m.look(3000, 20_000, 4 * KIB),
        (
            Verdict::Hold {
                new: false,
                give_back: 2048
            },
            None
        )
    );
    // Quiet, but for less than the quiet period (1 s): still held.
    check_eq!(m.look(3600, 20_000, 4 * KIB), (HOLD, None));
    // A whole quiet second from 3000: the hold ends, having lasted 2 s;
    // inflation goes on at half the pace.
    check_eq!(m.pace_ms(), PACE_MS);
    check_eq!(m.look(4000, 20_010, 4 * KIB), (Verdict::Go, Some(2000)));
    check!(!m.held());
    check_eq!(m.pace_ms(), 2 * PACE_MS);
    // The next hold needs two quiet seconds; nothing left to give back.
    check_eq!(
        m.look(5000, 30_000, 4 * KIB),
        (
            Verdict::Hold {
                new: true,
                give_back: 0
            },
            None
        )
    );
    check_eq!(m.look(6000, 30_000, 4 * KIB), (HOLD, None));
    check_eq!(m.look(7000, 30_000, 4 * KIB), (Verdict::Go, Some(2000)));
    // A reset (inflation idle, or protection off) ends a hold, forgets the
    // count and the rounds, and the quiet period is a second again.
    check_eq!(
        m.look(8000, 40_000, 4 * KIB).0,
        Verdict::Hold {
            new: true,
            give_back: 0
        }
    );
    check_eq!(m.reset(8500), Some(500));
    check_eq!(m.pace_ms(), PACE_MS);
    check_eq!(m.reset(8600), None);
    m.inflated(8600, 1);
    check!(m.settling(8600));
    check_eq!(m.reset(8600), None);
    check!(!m.settling(8600));
    check_eq!(m.look(9000, 1_000_000, 4 * KIB), (Verdict::Go, None));
    check_eq!(
        m.look(10_000, 1_002_000, 4 * KIB).0,
        Verdict::Hold {
            new: true,
            give_back: 0
        }
    );
    check_eq!(
        m.look(11_000, 1_002_000, 4 * KIB),
        (Verdict::Go, Some(1000))
    );
    // 64 KiB pages: 64 pages a second are the rate.
    let mut m = Monitor::default();
    check_eq!(m.look(0, 0, 64 * KIB), (Verdict::Go, None));
    check_eq!(m.look(1000, 63, 64 * KIB), (Verdict::Go, None));
    check_eq!(
        m.look(2000, 127, 64 * KIB).0,
        Verdict::Hold {
            new: true,
            give_back: 0
        }
    );
    // The quiet period doubles up to 64 s.
    let mut m = Monitor::default();
    let mut t = 0i64;
    let mut count = 0u64;
    check_eq!(m.look(t, count, 4 * KIB), (Verdict::Go, None));
    let mut lasted = 0;
    for _ in 0..10 {
        t += 1000;
        count += 10_000;
        check!(m.look(t, count, 4 * KIB).0 != Verdict::Go);
        loop {
            t += 1000;
            if let (Verdict::Go, Some(ms)) = m.look(t, count, 4 * KIB) {
                lasted = ms;
                break;
            }
        }
    }
    check_eq!(lasted, 64_000);
    // And the pace halves down to a round every 1.6 s.
    check_eq!(m.pace_ms(), MAX_PACE_MS);
    // Time that did not move or ran backwards, a counter that went
    // backwards, huge pages and counts do not panic.
    let mut m = Monitor::default();
    check_eq!(m.look(3000, 5, 4 * KIB), (Verdict::Go, None));
    check_eq!(m.look(3000, 0, 4 * KIB), (Verdict::Go, None));
    check_eq!(m.look(i64::MIN, 0, 4 * KIB), (Verdict::Go, None));
    check_eq!(
        m.look(5000, u64::MAX, usize::MAX).0,
        Verdict::Hold {
            new: true,
            give_back: 0
        }
    );
    m.inflated(i64::MAX, u64::MAX);
    m.inflated(i64::MAX, u64::MAX);
    check_eq!(m.reset(i64::MIN), Some(0));
}
