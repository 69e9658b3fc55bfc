// SPDX-License-Identifier: GPL-2.0
//! Queues are created once per probe (or restore): a second `find` would
//! create live queues again.
// expect: E0382
// expect: use of moved value

use crate::kapi::virtio::queue::QueueSetup;

fn misuse(mut setup: QueueSetup<'_>) -> kernel::error::Result {
    let _q = setup.sync(kernel::c_str!("q"))?;
    setup.find()?;
    setup.find()
}
