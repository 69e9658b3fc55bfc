// SPDX-License-Identifier: GPL-2.0
//! What goes with a buffer may be dropped by the queue after a reset, with
//! the binding's lifecycle lock and the driver's own lock held: only a type
//! whose drop takes no lock (`DropsAnywhere`, an unsafe promise) may ride
//! along. A value that takes a lock when dropped does not build.
// expect: E0277
// expect: the trait bound `Unlocks: buffers::DropsAnywhere` is not satisfied

use crate::kapi::sync::Mutex;
use crate::kapi::virtio::queue::{Bundle, OutBuf, WaitedQueue};
use kernel::{prelude::*, sync::Arc};

struct Unlocks(Arc<Mutex<u32>>);

impl Drop for Unlocks {
    fn drop(&mut self) {
        *self.0.lock() += 1;
    }
}

fn misuse(q: &mut WaitedQueue<Bundle<OutBuf, Unlocks>>, msg: KBox<Bundle<OutBuf, Unlocks>>) {
    let _ = q.add(msg);
}
