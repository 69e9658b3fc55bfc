// SPDX-License-Identifier: GPL-2.0
//! An irq-saving spinlock guard cannot move to another task: interrupts
//! were disabled on this CPU, and this CPU must unlock.
// expect: E0277
// expect: cannot be sent between threads safely

use crate::kapi::sync::SpinLockIrq;

fn needs_send<T: Send>(_: T) {}

fn misuse(l: &SpinLockIrq<u32>) {
    needs_send(l.lock());
}
