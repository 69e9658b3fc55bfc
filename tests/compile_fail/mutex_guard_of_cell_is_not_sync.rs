// SPDX-License-Identifier: GPL-2.0
//! A guard over data that is not `Sync` cannot be shared between tasks: a
//! shared guard hands out `&T`, and `&Cell` on two tasks is a data race.
// expect: E0277
// expect: cannot be shared between threads safely

use crate::kapi::sync::Mutex;
use core::cell::Cell;

fn needs_sync<T: Sync>(_: &T) {}

fn misuse(m: &Mutex<Cell<u32>>) {
    let guard = m.lock();
    needs_sync(&guard);
}
