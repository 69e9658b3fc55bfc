// SPDX-License-Identifier: GPL-2.0
//! Data behind an irq-saving spinlock is reached only inside its critical
//! section: a reference cannot leave the closure (nor can a guard outlive
//! an inner lock and turn interrupts back on with it held).
// expect: lifetime may not live long enough

use crate::kapi::sync::SpinLockIrq;

fn misuse(l: &SpinLockIrq<u32>) -> &mut u32 {
    l.with(|data| data)
}
