// SPDX-License-Identifier: GPL-2.0

//! Memory-management state the driver reports or depends on.

use crate::logic::MemSnapshot;
use kernel::bindings;

/// The page poison byte (`PAGE_POISON`).
pub(crate) const PAGE_POISON: u8 = bindings::PAGE_POISON as u8;

/// Whether freed pages are zeroed (`init_on_free`).
pub(crate) fn want_init_on_free() -> bool {
    // SAFETY: reads a static key; no preconditions.
    unsafe { bindings::want_init_on_free() }
}

/// Whether freed pages are poisoned (`page_poison=1`).
pub(crate) fn page_poisoning_enabled() -> bool {
    // SAFETY: reads a static key; no preconditions.
    unsafe { bindings::page_poisoning_enabled_static() }
}

/// The guest's memory figures and VM events, from the same sources as the C
/// driver's stats. May sleep.
pub(crate) fn snapshot() -> MemSnapshot {
    let mut s = MemSnapshot::default();
    #[cfg(CONFIG_VM_EVENT_COUNTERS)]
    {
        const N: usize = bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize;
        let mut ev = [0 as kernel::ffi::c_ulong; N];
        // SAFETY: `ev` has room for every VM event item.
        unsafe { bindings::all_vm_events(ev.as_mut_ptr()) };
        let get = |item: bindings::vm_event_item| ev.get(item as usize).map_or(0, |&v| v as u64);
        s.has_events = true;
        s.swap_in_pages = get(bindings::vm_event_item_PSWPIN);
        s.swap_out_pages = get(bindings::vm_event_item_PSWPOUT);
        s.major_faults = get(bindings::vm_event_item_PGMAJFAULT);
        s.minor_faults = get(bindings::vm_event_item_PGFAULT);
        s.oom_kills = get(bindings::vm_event_item_OOM_KILL);
        let first_stall =
            bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL;
        s.alloc_stalls = (0..bindings::MAX_NR_ZONES)
            .map(|zone| get(first_stall + zone))
            .fold(0u64, u64::wrapping_add);
        s.async_scan_pages = get(bindings::vm_event_item_PGSCAN_KSWAPD);
        s.direct_scan_pages = get(bindings::vm_event_item_PGSCAN_DIRECT);
        s.async_reclaim_pages = get(bindings::vm_event_item_PGSTEAL_KSWAPD);
        s.direct_reclaim_pages = get(bindings::vm_event_item_PGSTEAL_DIRECT);
        #[cfg(CONFIG_HUGETLB_PAGE)]
        {
            s.hugetlb = Some((
                get(bindings::vm_event_item_HTLB_BUDDY_PGALLOC),
                get(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
            ));
        }
    }
    let info = meminfo();
    s.free_pages = info.freeram as u64;
    s.total_pages = info.totalram as u64;
    s.available_pages = available_pages();
    // SAFETY: no preconditions.
    s.cache_pages =
        unsafe { bindings::global_node_page_state(bindings::node_stat_item_NR_FILE_PAGES) } as u64;
    s
}

/// Total RAM the kernel manages and the memory available to it right now
/// (`si_mem_available`), both in pages.
pub(crate) fn total_and_available() -> (u64, u64) {
    (meminfo().totalram as u64, available_pages())
}

/// `si_meminfo`: the kernel's memory totals, in pages.
fn meminfo() -> bindings::sysinfo {
    let mut info = core::mem::MaybeUninit::<bindings::sysinfo>::zeroed();
    // SAFETY: `info` is valid for writes; `si_meminfo` fills it.
    unsafe {
        bindings::si_meminfo(info.as_mut_ptr());
        info.assume_init()
    }
}

/// `si_mem_available`: pages available without swapping, never negative.
fn available_pages() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bindings::si_mem_available() }.max(0) as u64
}
