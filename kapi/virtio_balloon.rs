// SPDX-License-Identifier: GPL-2.0

//! The virtio balloon device's interface (virtio spec 5.5,
//! `include/uapi/linux/virtio_balloon.h`): its device ID, feature bits and
//! config space layout, typed.

use super::virtio::{ConfigLayout, Feature, Field};
use crate::kapi::bindings;

/// The device ID of the memory balloon.
pub(crate) const DEVICE_ID: u32 = bindings::VIRTIO_ID_BALLOON;

/// Feature bits.
pub(crate) mod feature {
    use super::{bindings, Feature};
    /// Deflate tells the host before pages are reused.
    pub(crate) const MUST_TELL_HOST: Feature =
        Feature::new(bindings::VIRTIO_BALLOON_F_MUST_TELL_HOST);
    /// The stats queue exists.
    pub(crate) const STATS_VQ: Feature = Feature::new(bindings::VIRTIO_BALLOON_F_STATS_VQ);
    /// The guest may deflate when it runs out of memory.
    pub(crate) const DEFLATE_ON_OOM: Feature =
        Feature::new(bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    /// Free page hinting (the free page queue, `free_page_hint_cmd_id`).
    pub(crate) const FREE_PAGE_HINT: Feature =
        Feature::new(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT);
    /// The guest tells the host what freed pages hold (`poison_val`).
    pub(crate) const PAGE_POISON: Feature = Feature::new(bindings::VIRTIO_BALLOON_F_PAGE_POISON);
    /// Free page reporting (the reporting queue).
    pub(crate) const REPORTING: Feature = Feature::new(bindings::VIRTIO_BALLOON_F_REPORTING);
}

/// The config space layout, `struct virtio_balloon_config`.
pub(crate) type Layout = bindings::virtio_balloon_config;

// SAFETY: a `repr(C)` struct of little-endian 32-bit fields (all-zero is
// valid), the config space of balloon devices; the fields below state when
// each exists, as the virtio spec (5.5.4) and the device models size it:
// `num_pages` and `actual` always, `free_page_hint_cmd_id` with
// FREE_PAGE_HINT, `poison_val` with PAGE_POISON.
unsafe impl ConfigLayout for Layout {
    const DEVICE_ID: u32 = DEVICE_ID;
}

/// `num_pages`: the host's target, in 4 KiB frames.
// SAFETY: always present (see the `ConfigLayout` impl).
pub(crate) const NUM_PAGES: Field<Layout, u32> = unsafe { config_field!(Layout, num_pages: u32) };

/// `actual`: what the guest reports to hold, in 4 KiB frames.
// SAFETY: always present.
pub(crate) const ACTUAL: Field<Layout, u32> = unsafe { config_field!(Layout, actual: u32) };

/// `free_page_hint_cmd_id` (a union with the old `free_page_report_cmd_id`).
// SAFETY: present with FREE_PAGE_HINT.
pub(crate) const FREE_PAGE_HINT_CMD_ID: Field<Layout, u32> =
    unsafe { config_field!(Layout, __bindgen_anon_1: u32, if feature::FREE_PAGE_HINT) };

/// `poison_val`: what freed pages hold.
// SAFETY: present with PAGE_POISON.
pub(crate) const POISON_VAL: Field<Layout, u32> =
    unsafe { config_field!(Layout, poison_val: u32, if feature::PAGE_POISON) };
