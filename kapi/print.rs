// SPDX-License-Identifier: GPL-2.0

//! Device-prefixed kernel messages (`dev_err!`, `dev_warn!`, `dev_info!`),
//! which the 6.12 `kernel` crate does not have yet.
//!
//! Messages go through the C `_dev_*` functions with the `%pA` format, so
//! they carry the driver and device name like any C driver's messages.

use core::fmt;
use kernel::device::Device;

/// Severity of a device message.
#[derive(Clone, Copy)]
pub(crate) enum Level {
    Err,
    Warn,
    Info,
}

/// The raw `struct device` of `dev`.
pub(crate) fn raw_device(dev: &Device) -> *mut crate::kapi::bindings::device {
    // `Device` is `#[repr(transparent)]` over `Opaque<bindings::device>`
    // (rust/kernel/device.rs); its own accessor is private to the kernel
    // crate in 6.12.
    core::ptr::from_ref(dev).cast_mut().cast()
}

// `raw_device` relies on the layout of a type whose field is private: a
// kernel crate that changed it would fail to build here.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<Device>() == size_of::<crate::kapi::bindings::device>());
    assert!(align_of::<Device>() == align_of::<crate::kapi::bindings::device>());
};

/// Something with a `struct device` to name in messages.
pub(crate) trait AsDevice {
    /// The device.
    fn as_device(&self) -> &Device;
}

impl AsDevice for Device {
    fn as_device(&self) -> &Device {
        self
    }
}

/// Prints `args` prefixed with the device's driver and name. Without
/// `CONFIG_PRINTK` the kernel prints nothing, and the C `_dev_*` functions
/// are empty inline functions with no symbol: so is this one.
#[cfg_attr(not(CONFIG_PRINTK), allow(unused_variables))]
pub(crate) fn dev_print(dev: &Device, level: Level, args: fmt::Arguments<'_>) {
    #[cfg(CONFIG_PRINTK)]
    dev_print_on(dev, level, args);
}

#[cfg(CONFIG_PRINTK)]
fn dev_print_on(dev: &Device, level: Level, args: fmt::Arguments<'_>) {
    use crate::kapi::bindings;
    use core::ffi::c_void;

    let dev = raw_device(dev);
    let fmt = c"%pA".as_ptr().cast::<kernel::ffi::c_char>();
    let arg = core::ptr::from_ref(&args).cast::<c_void>();
    // SAFETY: `dev` is a live device (borrowed); the format is NUL-terminated
    // and `%pA` takes the one `fmt::Arguments` pointer.
    unsafe {
        match level {
            Level::Err => bindings::_dev_err(dev, fmt, arg),
            Level::Warn => bindings::_dev_warn(dev, fmt, arg),
            Level::Info => bindings::_dev_info(dev, fmt, arg),
        }
    }
}

/// Prints an error message prefixed with the device name. `$dev` is
/// anything that is [`AsDevice`].
macro_rules! dev_err {
    ($dev:expr, $($arg:tt)*) => {
        $crate::kapi::print::dev_print(
            $crate::kapi::print::AsDevice::as_device(&*$dev),
            $crate::kapi::print::Level::Err, format_args!($($arg)*))
    };
}

/// Prints a warning prefixed with the device name.
macro_rules! dev_warn {
    ($dev:expr, $($arg:tt)*) => {
        $crate::kapi::print::dev_print(
            $crate::kapi::print::AsDevice::as_device(&*$dev),
            $crate::kapi::print::Level::Warn, format_args!($($arg)*))
    };
}

/// Prints an informational message prefixed with the device name.
macro_rules! dev_info {
    ($dev:expr, $($arg:tt)*) => {
        $crate::kapi::print::dev_print(
            $crate::kapi::print::AsDevice::as_device(&*$dev),
            $crate::kapi::print::Level::Info, format_args!($($arg)*))
    };
}
