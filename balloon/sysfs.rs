// SPDX-License-Identifier: GPL-2.0

//! The driver's state in sysfs, for kernels where debugfs is not mounted
//! or is closed (lockdown): `/sys/bus/virtio/devices/virtio<N>/balloon/`,
//! read-only, one value per file. `docs/ABI/testing/sysfs-bus-virtio-balloon`
//! documents each; debugfs keeps the full counter set and the fault knobs.

use super::*;
use crate::kapi::sysfs::{Attr, Show};

/// A counter's current value.
fn counter(out: &mut Show<'_>, c: &AtomicU64) -> Result {
    out.line(format_args!("{}", c.load(Ordering::Relaxed)))
}

/// The attributes, in the order `ls -U` lists them.
pub(super) const ATTRIBUTES: [Attr<Balloon>; 10] = [
    Attr {
        name: c_str!("target_frames"),
        show: |b, out| counter(out, &b.shared().stats.target_frames),
    },
    Attr {
        name: c_str!("actual_frames"),
        show: |b, out| counter(out, &b.shared().stats.actual_frames),
    },
    Attr {
        name: c_str!("balloon_pages"),
        show: |b, out| {
            let sh = b.shared();
            let frames = sh.stats.actual_frames.load(Ordering::Relaxed);
            out.line(format_args!("{}", logic::frames_to_pages(frames, sh.fpp)))
        },
    },
    Attr {
        name: c_str!("floor_kib"),
        show: |b, out| {
            let kib = floor_pages(b.core()).saturating_mul(PAGE_SIZE as u64 / 1024);
            out.line(format_args!("{}", kib))
        },
    },
    Attr {
        name: c_str!("inflation_held"),
        show: |b, out| {
            let held = if b.shared().floor.is_held() {
                "floor"
            } else if workingset_held(b.shared()) {
                "working_set"
            } else {
                "no"
            };
            out.line(format_args!("{}", held))
        },
    },
    Attr {
        name: c_str!("oom_notifications"),
        show: |b, out| counter(out, &b.shared().stats.oom_notifications),
    },
    Attr {
        name: c_str!("oom_deflated_pages"),
        show: |b, out| counter(out, &b.shared().stats.oom_deflated_pages),
    },
    Attr {
        name: c_str!("migrated_pages"),
        show: |b, out| counter(out, &b.shared().stats.migrated_pages),
    },
    Attr {
        name: c_str!("host_errors"),
        show: |b, out| counter(out, &b.shared().stats.host_errors),
    },
    Attr {
        name: c_str!("page_size"),
        show: |_, out| out.line(format_args!("{}", PAGE_SIZE)),
    },
];
