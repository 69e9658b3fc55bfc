// SPDX-License-Identifier: GPL-2.0
//! Queue disciplines do not mix: a synchronous send on a posted queue
//! would take the posted buffer back as its own.
// expect: E0599
// expect: no method named `send` found

use crate::kapi::virtio::queue::{OutBuf, PostedQueue};

fn misuse(q: &mut PostedQueue<OutBuf>, buf: &OutBuf) {
    let _ = q.send(buf, &[(0, 4)]);
}
