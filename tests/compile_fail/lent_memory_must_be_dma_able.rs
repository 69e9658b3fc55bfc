// SPDX-License-Identifier: GPL-2.0
//! A synchronous send takes only an `OutBuf` (kmalloc'd memory the device
//! can reach), never an arbitrary slice (the stack is not in the direct
//! map).
// expect: E0308
// expect: mismatched types

use crate::kapi::virtio::queue::SyncQueue;

fn misuse(q: &mut SyncQueue) {
    let on_stack = [0u8; 16];
    let _ = q.send(&on_stack, &[(0, 16)]);
}
