// SPDX-License-Identifier: GPL-2.0
//! What goes with a buffer on a waited queue (pages described to the host,
//! say) is the queue's until `wait` gives it back: the driver cannot reach
//! it meanwhile.
// expect: E0382
// expect: borrow of moved value: `msg`

use crate::kapi::virtio::queue::{Bundle, OutBuf, WaitedQueue};
use kernel::prelude::*;

fn misuse(q: &mut WaitedQueue<Bundle<OutBuf, KVec<u8>>>, msg: KBox<Bundle<OutBuf, KVec<u8>>>) {
    let _ = q.add(msg);
    let _ = msg.with.len();
}
