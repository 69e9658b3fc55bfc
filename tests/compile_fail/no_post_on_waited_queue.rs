// SPDX-License-Identifier: GPL-2.0
//! A waited queue adds, then kicks outside the queue's irq-safe lock: it
//! has no `post`, which would kick the device under that lock, with
//! interrupts off while a host that answers during the kick does its work.
// expect: E0599
// expect: `Waited: KickOnPost`

use crate::kapi::virtio::queue::{OutBuf, WaitedQueue};
use kernel::prelude::*;

fn misuse(q: &mut WaitedQueue<OutBuf>, buf: KBox<OutBuf>) {
    let _ = q.post(buf);
}
