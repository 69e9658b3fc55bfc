// SPDX-License-Identifier: GPL-2.0
//! Queue disciplines do not mix: a synchronous queue cannot have a buffer
//! posted on it (its waits would take that buffer back as their own).
// expect: E0599
// expect: no method named `post` found

use crate::kapi::virtio::queue::{OutBuf, SyncQueue};
use kernel::prelude::*;

fn misuse(q: &mut SyncQueue, buf: KBox<OutBuf>) {
    let _ = q.post(buf);
}
