// SPDX-License-Identifier: GPL-2.0

//! Typed access to a device's config space.

use super::*;

/// The layout of a device type's config space.
///
/// # Safety
///
/// `Self` is a plain-data `repr(C)` struct that describes the config space
/// of devices with ID `DEVICE_ID`, and every
/// [`Field`] made for it with [`config_field!`] states truthfully when the
/// field exists in a device's config space.
pub(crate) unsafe trait ConfigLayout: Sized + 'static {
    /// The virtio device ID whose config space this is.
    const DEVICE_ID: u32;
}

/// A scalar config-space field type, stored little-endian.
pub(crate) trait ConfigScalar: Copy + private::Sealed {
    #[doc(hidden)]
    fn from_le(b: [u8; 8]) -> Self;
    #[doc(hidden)]
    fn to_le(self) -> [u8; 8];
}

impl private::Sealed for u8 {}
impl private::Sealed for u16 {}
impl private::Sealed for u32 {}

macro_rules! scalar {
    ($t:ty) => {
        impl ConfigScalar for $t {
            fn from_le(b: [u8; 8]) -> Self {
                let mut v = [0u8; core::mem::size_of::<$t>()];
                v.copy_from_slice(&b[..core::mem::size_of::<$t>()]);
                <$t>::from_le_bytes(v)
            }
            fn to_le(self) -> [u8; 8] {
                let mut b = [0u8; 8];
                b[..core::mem::size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
                b
            }
        }
    };
}
scalar!(u8);
scalar!(u16);
scalar!(u32);

/// A field of config layout `L`, of type `T`: its offset and width come
/// from the struct, and it knows which feature (if any) it needs. Made by
/// [`config_field!`].
///
/// # Invariants
///
/// `offset` is the offset of a field of `L` that is `size_of::<T>()` bytes
/// wide and exists in the config space of every device of `L`'s type that
/// has negotiated `feature` (of every such device, for `None`): what
/// [`Field::new_unchecked`]'s caller promised. [`Config`] reads and writes
/// a field only after checking `feature`, so its accesses stay inside the
/// device's config space.
pub(crate) struct Field<L: ConfigLayout, T: ConfigScalar> {
    pub(super) offset: u32,
    pub(super) feature: Option<Feature>,
    pub(super) _t: PhantomData<fn(&L) -> T>,
}

impl<L: ConfigLayout, T: ConfigScalar> Clone for Field<L, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: ConfigLayout, T: ConfigScalar> Copy for Field<L, T> {}

impl<L: ConfigLayout, T: ConfigScalar> Field<L, T> {
    /// # Safety
    ///
    /// `offset` is the offset of a field of `L` that is `size_of::<T>()`
    /// bytes wide and exists in the config space of every device that has
    /// negotiated `feature` (or of every device, for `None`).
    pub(crate) const unsafe fn new_unchecked(offset: usize, feature: Option<Feature>) -> Self {
        // INVARIANT: as the caller promises.
        Self {
            offset: offset as u32,
            feature,
            _t: PhantomData,
        }
    }
}

/// A [`Field`] of layout `$layout`: field `$field` read as `$t` (which must
/// be exactly as wide), present always or only `if` a feature is
/// negotiated. Expands to an `unsafe` constructor: the caller states that
/// the feature condition is what the device type's specification says.
macro_rules! config_field {
    ($layout:ty, $field:ident : $t:ty $(, if $feature:expr)?) => {{
        const fn width<F>(_: *const F) -> usize {
            ::core::mem::size_of::<F>()
        }
        const _: () = ::core::assert!(
            width({
                let l = ::core::mem::MaybeUninit::<$layout>::uninit();
                // SAFETY: only the field's address is computed; nothing is
                // read.
                unsafe { ::core::ptr::addr_of!((*l.as_ptr()).$field) }
            }) == ::core::mem::size_of::<$t>(),
            "config field read with a type of another width"
        );
        $crate::kapi::virtio::Field::<$layout, $t>::new_unchecked(
            ::core::mem::offset_of!($layout, $field),
            $crate::kapi::virtio::config_field!(@feature $($feature)?),
        )
    }};
    (@feature) => { None };
    (@feature $f:expr) => { Some($f) };
}
pub(crate) use config_field;

/// The config space of a bound device, with layout `L`. Its accessors may
/// sleep: process context only.
pub(crate) struct Config<L: ConfigLayout> {
    pub(super) bind: Arc<Binding>,
    pub(super) _l: PhantomData<fn() -> L>,
}

impl<L: ConfigLayout> Config<L> {
    /// Checks that the binding is alive and `f` exists on this device.
    pub(super) fn access<T: ConfigScalar>(
        &self,
        f: &Field<L, T>,
    ) -> Result<(RwSemRead<'_>, *mut bindings::virtio_device)> {
        let life = self.bind.life.read();
        // SAFETY: `state` is only written with `life` held for writing.
        let state = unsafe { &*self.bind.state.get() };
        if !state.bound || state.frozen {
            return Err(ENODEV);
        }
        let vdev = self.bind.vdev.as_ptr();
        if let Some(feat) = f.feature {
            // SAFETY: bound (checked under `life`), so `features` is stable.
            if unsafe { (*vdev).features } & feat.mask() == 0 {
                return Err(ENOTSUPP);
            }
        }
        Ok((life, vdev))
    }

    /// Reads field `f`, with one access of its width, retried until the
    /// device's config generation is stable. May sleep.
    pub(crate) fn read<T: ConfigScalar>(&self, f: Field<L, T>) -> Result<T> {
        might_sleep!();
        let (_life, vdev) = self.access(&f)?;
        let mut bytes = [0u8; 8];
        let len = core::mem::size_of::<T>() as u32;
        // The field lies within the device's config space (`Field`'s
        // contract, feature checked above); the transport's `get` exists
        // (checked before probe) and writes `len` <= 8 bytes.
        // SAFETY: see above; the device is bound (held by `_life`).
        unsafe {
            let ops = (*vdev).config;
            let get = (*ops).get.ok_or(ENODEV)?;
            let generation = (*ops).generation;
            loop {
                let before = generation.map_or(0, |g| g(vdev));
                get(vdev, f.offset, bytes.as_mut_ptr().cast(), len);
                if generation.map_or(0, |g| g(vdev)) == before {
                    break;
                }
            }
        }
        Ok(T::from_le(bytes))
    }

    /// Writes field `f` with one access of its width. May sleep.
    pub(crate) fn write<T: ConfigScalar>(&self, f: Field<L, T>, value: T) -> Result {
        might_sleep!();
        let (_life, vdev) = self.access(&f)?;
        let bytes = value.to_le();
        let len = core::mem::size_of::<T>() as u32;
        // SAFETY: as in `read`; `bytes` holds `len` bytes to read. A
        // transport without `set` has a read-only config space.
        unsafe {
            let set = (*(*vdev).config).set.ok_or(ENOTSUPP)?;
            set(vdev, f.offset, bytes.as_ptr().cast(), len);
        }
        Ok(())
    }
}
