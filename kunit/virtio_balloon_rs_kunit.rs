// SPDX-License-Identifier: GPL-2.0

//! KUnit tests of the driver's pure logic (`logic.rs`), and of the parts
//! of the safe layer (`kapi/`) whose guarantees are behaviour rather than
//! types (work items, debugfs entries).
//!
//! Linux 6.12 has no `#[kunit_tests]`; this module declares its suite the
//! way C's `kunit_test_suite()` does: a pointer to a `struct kunit_suite` in
//! the `.kunit_test_suites` section, which the module loader collects and
//! KUnit runs when the module is loaded. Results appear as KTAP in the
//! kernel log and under /sys/kernel/debug/kunit/virtio_balloon_rs/results.

// The driver uses every item of its logic and of kapi (its own build would
// warn otherwise); this suite tests behaviour and leaves the rest alone.
#[allow(dead_code)]
#[path = "../logic.rs"]
mod logic;
#[allow(dead_code, unused_imports, unused_macros)]
#[macro_use]
#[path = "../kapi/mod.rs"]
mod kapi;

use crate::kapi::bindings;
use core::ptr::addr_of_mut;
use kernel::{c_str, prelude::*, sync::Arc};
use logic::*;

module! {
    type: KunitModule,
    name: "virtio_balloon_rs_kunit",
    author: "virtio_balloon_rs developers",
    description: "KUnit tests for virtio_balloon_rs",
    license: "GPL",
}

struct KunitModule;

// The wire format in `logic.rs` against the kernel's own uapi headers:
// checked when this module is built, not when it runs.
const _: () = {
    use core::mem::size_of;
    assert!(PFN_SHIFT == bindings::VIRTIO_BALLOON_PFN_SHIFT);
    assert!(stat::ENTRY_BYTES == size_of::<bindings::virtio_balloon_stat>());
    assert!(stat::NR == bindings::VIRTIO_BALLOON_S_NR as usize);
    assert!(stat::SWAP_IN as u32 == bindings::VIRTIO_BALLOON_S_SWAP_IN);
    assert!(stat::SWAP_OUT as u32 == bindings::VIRTIO_BALLOON_S_SWAP_OUT);
    assert!(stat::MAJFLT as u32 == bindings::VIRTIO_BALLOON_S_MAJFLT);
    assert!(stat::MINFLT as u32 == bindings::VIRTIO_BALLOON_S_MINFLT);
    assert!(stat::MEMFREE as u32 == bindings::VIRTIO_BALLOON_S_MEMFREE);
    assert!(stat::MEMTOT as u32 == bindings::VIRTIO_BALLOON_S_MEMTOT);
    assert!(stat::AVAIL as u32 == bindings::VIRTIO_BALLOON_S_AVAIL);
    assert!(stat::CACHES as u32 == bindings::VIRTIO_BALLOON_S_CACHES);
    assert!(stat::HTLB_PGALLOC as u32 == bindings::VIRTIO_BALLOON_S_HTLB_PGALLOC);
    assert!(stat::HTLB_PGFAIL as u32 == bindings::VIRTIO_BALLOON_S_HTLB_PGFAIL);
    assert!(stat::OOM_KILL as u32 == bindings::VIRTIO_BALLOON_S_OOM_KILL);
    assert!(stat::ALLOC_STALL as u32 == bindings::VIRTIO_BALLOON_S_ALLOC_STALL);
    assert!(stat::ASYNC_SCAN as u32 == bindings::VIRTIO_BALLOON_S_ASYNC_SCAN);
    assert!(stat::DIRECT_SCAN as u32 == bindings::VIRTIO_BALLOON_S_DIRECT_SCAN);
    assert!(stat::ASYNC_RECLAIM as u32 == bindings::VIRTIO_BALLOON_S_ASYNC_RECLAIM);
    assert!(stat::DIRECT_RECLAIM as u32 == bindings::VIRTIO_BALLOON_S_DIRECT_RECLAIM);
    assert!(hint::CMD_ID_STOP == bindings::VIRTIO_BALLOON_CMD_ID_STOP);
    assert!(hint::CMD_ID_DONE == bindings::VIRTIO_BALLOON_CMD_ID_DONE);
    assert!(PAGE_POISON_BYTE == bindings::PAGE_POISON);
};

/// The poison byte the driver reports (`PAGE_POISON`, checked above).
const PAGE_POISON_BYTE: u32 = 0xaa;

impl kernel::Module for KunitModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // KUnit runs the suite once the module is live; nothing to do here.
        Ok(KunitModule)
    }
}

/// Fails the running test case (and ends it) unless `$left == $right`.
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {
        kernel::kunit_assert_eq!(
            "virtio_balloon_rs",
            "kunit/{logic,kapi}_cases.rs",
            0,
            $left,
            $right
        )
    };
}

/// Fails the running test case (and ends it) unless `$cond` holds.
macro_rules! check {
    ($cond:expr $(,)?) => {
        kernel::kunit_assert!("virtio_balloon_rs", "kunit/{logic,kapi}_cases.rs", 0, $cond)
    };
}

// ---------------------------------------------------------------------------
// The cases, one file per layer (after the macros above, which they use).

mod kapi_cases;
mod logic_cases;
use kapi_cases::*;
use logic_cases::*;

// ---------------------------------------------------------------------------
// Suite registration.

/// Defines a C-callable KUnit case for a plain Rust test function.
macro_rules! kunit_case {
    ($name:ident) => {{
        extern "C" fn run(_test: *mut bindings::kunit) {
            $name()
        }
        // SAFETY: all-zero is a valid `kunit_case` (null pointers, no
        // attributes, status 0); the fields set below are the ones KUnit reads.
        let mut case: bindings::kunit_case = unsafe { core::mem::zeroed() };
        case.run_case = Some(run);
        case.name = concat!(stringify!($name), "\0").as_ptr().cast();
        case
    }};
}

const N_CASES: usize = 30;

/// The cases, terminated by an all-zero entry as KUnit requires.
static mut CASES: [bindings::kunit_case; N_CASES + 1] = [
    kunit_case!(frames_per_page_by_page_size),
    kunit_case!(reporting_asks_for_2_mib_blocks_with_large_pages),
    kunit_case!(first_frame_of_a_page),
    kunit_case!(frames_beyond_32_bits_are_detected),
    kunit_case!(targets_round_up_to_whole_pages),
    kunit_case!(batches_hold_at_most_256_frames),
    kunit_case!(page_frames_encode_little_endian),
    kunit_case!(feature_names_are_listed),
    kunit_case!(targets_are_capped_to_what_actual_can_report),
    kunit_case!(rounds_move_towards_the_target),
    kunit_case!(pages_fill_messages_of_at_most_256_frames),
    kunit_case!(oom_deflates_one_mib_counted_in_kernel_pages),
    kunit_case!(allocation_retries_start_quick_and_back_off_to_200_ms),
    kunit_case!(oom_ramp_doubles_within_a_burst_up_to_the_cap),
    kunit_case!(oom_ramp_overshoot_stays_below_the_need_and_the_cap),
    kunit_case!(oom_ramp_starts_again_after_a_quiet_period),
    kunit_case!(stats_are_packed_le16_tags_and_le64_values),
    kunit_case!(stats_for_older_hosts_carry_tags_0_to_9_only),
    kunit_case!(poison_val_tells_the_host_what_freed_pages_hold),
    kunit_case!(the_automatic_floor_is_a_32nd_of_ram_and_at_least_4_mib),
    kunit_case!(a_floor_in_mib_counts_in_kernel_pages),
    kunit_case!(held_at_the_floor_inflation_resumes_a_margin_above_it),
    kunit_case!(working_set_refaults_hold_inflation_until_a_quiet_second),
    kunit_case!(hint_cmd_ids_drive_runs_stops_and_done),
    kunit_case!(shrinker_gives_back_whole_hint_blocks),
    kunit_case!(work_dropped_by_its_own_handler_does_not_wait_for_itself),
    kunit_case!(work_stopped_by_its_own_handler_runs_no_more),
    kunit_case!(debugfs_entries_keep_their_parent),
    kunit_case!(batches_move_their_tail_and_filter_from_an_index),
    kunit_case!(sysfs_values_keep_to_their_page),
    // SAFETY: the all-zero terminator KUnit looks for.
    unsafe { core::mem::zeroed() },
];

const fn suite_name(name: &[u8]) -> [kernel::ffi::c_char; 256] {
    let mut out = [0 as kernel::ffi::c_char; 256];
    let mut i = 0;
    while i < name.len() && i < 255 {
        out[i] = name[i] as kernel::ffi::c_char;
        i += 1;
    }
    out
}

static mut SUITE: bindings::kunit_suite = {
    // SAFETY: all-zero is a valid `kunit_suite` (no hooks, no attributes).
    let mut suite: bindings::kunit_suite = unsafe { core::mem::zeroed() };
    suite.name = suite_name(b"virtio_balloon_rs");
    // Only the address of `CASES` is taken; KUnit is its only user.
    suite.test_cases = addr_of_mut!(CASES).cast();
    suite
};

/// What the module loader collects from `.kunit_test_suites`.
#[repr(transparent)]
struct SuitePtr(*mut bindings::kunit_suite);

// SAFETY: the pointer is only read by the module loader and KUnit.
unsafe impl Sync for SuitePtr {}

#[used]
#[link_section = ".kunit_test_suites"]
static SUITE_PTR: SuitePtr = SuitePtr(addr_of_mut!(SUITE));
