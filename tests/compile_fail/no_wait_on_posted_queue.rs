// SPDX-License-Identifier: GPL-2.0
//! Queue disciplines do not mix: sleeping for a buffer on a posted queue
//! would take back what the driver's `buffers_used` takes itself.
// expect: E0599
// expect: no method named `wait` found

use crate::kapi::virtio::queue::{OutBuf, PostedQueue};

fn misuse(q: &mut PostedQueue<OutBuf>) {
    let _ = q.wait();
}
