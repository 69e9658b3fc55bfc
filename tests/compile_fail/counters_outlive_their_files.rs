// SPDX-License-Identifier: GPL-2.0
//! A debugfs file points at its counter for as long as the directory
//! keeps the set of counters: a set may only hand out counters it owns
//! (their lifetime is tied to the set's), never a temporary that a reader
//! of the file would find freed.
// expect: E0597
// expect: `tmp` does not live long enough

use crate::kapi::debugfs::Counters;
use core::sync::atomic::AtomicU64;
use kernel::{c_str, str::CStr};

struct Dangling;

impl Counters for Dangling {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'static CStr, &'a AtomicU64)) {
        let tmp = AtomicU64::new(0);
        f(c_str!("gone"), &tmp);
    }
}
