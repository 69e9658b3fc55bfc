// SPDX-License-Identifier: GPL-2.0
//! A show callback writes into the page sysfs lends it for that call
//! only: the writer cannot be kept for later (a later write would land in
//! a page sysfs has freed or handed to another reader).
// expect: lifetime may not live long enough

use crate::kapi::sysfs::{Attr, Show};
use kernel::{c_str, prelude::*};

fn keep(_: &u32, out: &mut Show<'_>) -> Result {
    let kept: &'static mut Show<'static> = out;
    kept.line(format_args!("later"))
}

pub(crate) const KEPT: Attr<u32> = Attr {
    name: c_str!("kept"),
    show: keep,
};
