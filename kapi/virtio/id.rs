// SPDX-License-Identifier: GPL-2.0

//! Feature bits and device ID tables.

use super::*;

/// A virtio feature bit: below 64 by construction (the virtio core BUG()s
/// on a larger one in a driver's feature table). Make them in `const`s, so
/// that a bad bit is a build error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub(crate) struct Feature(u32);

impl Feature {
    /// Feature bit `bit`; fails to build (in a constant) unless `bit < 64`.
    pub(crate) const fn new(bit: u32) -> Self {
        assert!(bit < 64, "virtio feature bits are below 64");
        Self(bit)
    }

    pub(super) const fn mask(self) -> u64 {
        1u64 << self.0
    }
}

/// Transport feature bits a driver may have to refuse in `validate`.
pub(crate) mod feature {
    use super::Feature;
    use crate::kapi::bindings;
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub(crate) const RING_INDIRECT_DESC: Feature =
        Feature::new(bindings::VIRTIO_RING_F_INDIRECT_DESC);
    /// `VIRTIO_F_ACCESS_PLATFORM`.
    pub(crate) const ACCESS_PLATFORM: Feature = Feature::new(bindings::VIRTIO_F_ACCESS_PLATFORM);
}

/// The ID table of a driver: the device IDs it binds to, with the terminator
/// the bus needs. Made by [`virtio_device_table!`], which also exports it
/// for `modpost`, so the module's aliases come from this one list.
#[repr(C)]
pub(crate) struct IdTable<const N: usize> {
    pub(super) ids: [bindings::virtio_device_id; N],
    pub(super) end: bindings::virtio_device_id,
}

// SAFETY: plain integers, never written after construction.
unsafe impl<const N: usize> Sync for IdTable<N> {}

impl<const N: usize> IdTable<N> {
    /// A table of `devices` (any vendor).
    pub(crate) const fn new(devices: [u32; N]) -> Self {
        let mut ids = [bindings::virtio_device_id {
            device: 0,
            vendor: 0,
        }; N];
        let mut i = 0;
        while i < N {
            assert!(devices[i] != 0, "device ID 0 ends the table");
            ids[i] = bindings::virtio_device_id {
                device: devices[i],
                vendor: bindings::VIRTIO_DEV_ANY_ID,
            };
            i += 1;
        }
        Self {
            ids,
            end: bindings::virtio_device_id {
                device: 0,
                vendor: 0,
            },
        }
    }

    /// The table as the bus reads it.
    pub(crate) const fn as_ref(&'static self) -> IdTableRef {
        IdTableRef(self.ids.as_ptr())
    }
}

/// A terminated ID table ([`IdTable::as_ref`]).
#[derive(Clone, Copy)]
pub(crate) struct IdTableRef(pub(super) *const bindings::virtio_device_id);

/// Defines a driver's [`IdTable`] as `$table`, exported to `modpost` as a
/// virtio device table (`__mod_virtio__<table>_device_table`), which turns
/// it into the module's `virtio:d...v*` aliases.
macro_rules! virtio_device_table {
    ($table:ident, [$($id:expr),+ $(,)?]) => {
        #[used]
        #[export_name = concat!("__mod_virtio__", stringify!($table), "_device_table")]
        static $table: $crate::kapi::virtio::IdTable<{ 0 $(+ { let _ = $id; 1 })+ }> =
            $crate::kapi::virtio::IdTable::new([$($id),+]);
    };
}
