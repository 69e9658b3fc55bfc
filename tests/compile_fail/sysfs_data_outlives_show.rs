// SPDX-License-Identifier: GPL-2.0
//! A show callback is lent the driver's data for that call only: it
//! cannot keep a reference to it, since remove frees the data once the
//! files are gone (and their reads drained).
// expect: lifetime may not live long enough

use crate::kapi::sysfs::{Attr, Show};
use kernel::{c_str, prelude::*};

fn keep(data: &u32, out: &mut Show<'_>) -> Result {
    let kept: &'static u32 = data;
    out.line(format_args!("{}", kept))
}

pub(crate) const KEPT: Attr<u32> = Attr {
    name: c_str!("kept"),
    show: keep,
};
