// SPDX-License-Identifier: GPL-2.0

//! Memory-management figures and settings: VM event counters, the
//! kernel's memory totals, and how freed pages are treated.

use crate::kapi::bindings;

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

/// A VM event counter (`enum vm_event_item`), as /proc/vmstat names it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum VmEvent {
    /// `pswpin`: pages swapped in.
    SwapIn,
    /// `pswpout`: pages swapped out.
    SwapOut,
    /// `pgmajfault`.
    MajorFault,
    /// `pgfault`.
    Fault,
    /// `oom_kill`.
    OomKill,
    /// `pgscan_kswapd`: pages scanned by kswapd.
    ScanKswapd,
    /// `pgscan_direct`: pages scanned by direct reclaim.
    ScanDirect,
    /// `pgsteal_kswapd`: pages reclaimed by kswapd.
    StealKswapd,
    /// `pgsteal_direct`: pages reclaimed by direct reclaim.
    StealDirect,
}

impl VmEvent {
    fn item(self) -> bindings::vm_event_item {
        match self {
            VmEvent::SwapIn => bindings::vm_event_item_PSWPIN,
            VmEvent::SwapOut => bindings::vm_event_item_PSWPOUT,
            VmEvent::MajorFault => bindings::vm_event_item_PGMAJFAULT,
            VmEvent::Fault => bindings::vm_event_item_PGFAULT,
            VmEvent::OomKill => bindings::vm_event_item_OOM_KILL,
            VmEvent::ScanKswapd => bindings::vm_event_item_PGSCAN_KSWAPD,
            VmEvent::ScanDirect => bindings::vm_event_item_PGSCAN_DIRECT,
            VmEvent::StealKswapd => bindings::vm_event_item_PGSTEAL_KSWAPD,
            VmEvent::StealDirect => bindings::vm_event_item_PGSTEAL_DIRECT,
        }
    }
}

/// A snapshot of every VM event counter, summed over CPUs (`all_vm_events`).
/// Only [`vm_events`] makes one, and only on kernels with the counters.
pub(crate) struct VmEvents(
    [kernel::ffi::c_ulong; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize],
);

impl VmEvents {
    fn raw(&self, item: bindings::vm_event_item) -> u64 {
        self.0.get(item as usize).map_or(0, |&v| v as u64)
    }

    /// One counter.
    pub(crate) fn get(&self, ev: VmEvent) -> u64 {
        self.raw(ev.item())
    }

    /// Allocation stalls (`allocstall_*`), summed over all zones.
    pub(crate) fn alloc_stalls(&self) -> u64 {
        let first = bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL;
        (0..bindings::MAX_NR_ZONES)
            .map(|zone| self.raw(first + zone))
            .fold(0u64, u64::wrapping_add)
    }

    /// Huge page allocations and failures (`htlb_buddy_alloc_*`), with
    /// `CONFIG_HUGETLB_PAGE`.
    pub(crate) fn hugetlb(&self) -> Option<(u64, u64)> {
        #[cfg(CONFIG_HUGETLB_PAGE)]
        return Some((
            self.raw(bindings::vm_event_item_HTLB_BUDDY_PGALLOC),
            self.raw(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
        ));
        #[cfg(not(CONFIG_HUGETLB_PAGE))]
        None
    }
}

/// The VM event counters, or `None` on kernels without them. Sums over every
/// CPU: may take a while, and sleeps (it holds the CPU hotplug lock).
pub(crate) fn vm_events() -> Option<VmEvents> {
    #[cfg(CONFIG_VM_EVENT_COUNTERS)]
    {
        let mut ev = VmEvents([0; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize]);
        // SAFETY: the array has room for every VM event item.
        unsafe { bindings::all_vm_events(ev.0.as_mut_ptr()) };
        Some(ev)
    }
    #[cfg(not(CONFIG_VM_EVENT_COUNTERS))]
    None
}

/// The kernel's memory totals (`si_meminfo`), in pages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemInfo {
    /// Pages the kernel manages (MemTotal).
    pub(crate) total: u64,
    /// Free pages (MemFree).
    pub(crate) free: u64,
}

/// `si_meminfo`.
pub(crate) fn meminfo() -> MemInfo {
    let mut info = core::mem::MaybeUninit::<bindings::sysinfo>::zeroed();
    // SAFETY: `info` is valid for writes; `si_meminfo` fills it.
    let info = unsafe {
        bindings::si_meminfo(info.as_mut_ptr());
        info.assume_init()
    };
    MemInfo {
        total: info.totalram as u64,
        free: info.freeram as u64,
    }
}

/// Pages available without swapping (`si_mem_available`), never negative.
pub(crate) fn available_pages() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bindings::si_mem_available() }.max(0) as u64
}

/// Refaults the kernel judged recent and activated, anonymous and file
/// (`workingset_activate_anon` + `workingset_activate_file` in
/// /proc/vmstat), ever, in pages: pages of the working set that came back
/// soon after they were evicted.
pub(crate) fn workingset_activations() -> u64 {
    [
        bindings::node_stat_item_WORKINGSET_ACTIVATE_ANON,
        bindings::node_stat_item_WORKINGSET_ACTIVATE_FILE,
    ]
    .into_iter()
    // SAFETY: no preconditions; both are node stat items.
    .map(|item| unsafe { bindings::global_node_page_state(item) } as u64)
    .fold(0u64, u64::wrapping_add)
}

/// Pages of file-backed memory, the page cache (`NR_FILE_PAGES`).
pub(crate) fn file_pages() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bindings::global_node_page_state(bindings::node_stat_item_NR_FILE_PAGES) as u64 }
}
