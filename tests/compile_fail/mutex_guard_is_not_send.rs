// SPDX-License-Identifier: GPL-2.0
//! A mutex guard cannot move to another task: a kernel mutex must be
//! released by the task that took it.
// expect: E0277
// expect: cannot be sent between threads safely

use crate::kapi::sync::Mutex;

fn needs_send<T: Send>(_: T) {}

fn misuse(m: &Mutex<u32>) {
    needs_send(m.lock());
}
