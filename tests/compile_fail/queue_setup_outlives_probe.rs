// SPDX-License-Identifier: GPL-2.0
//! The queue set-up handed to probe cannot be kept for later (to set up
//! queues outside probe or restore).
// expect: lifetime may not live long enough

use crate::kapi::virtio::queue::QueueSetup;

fn misuse(setup: QueueSetup<'_>) -> QueueSetup<'static> {
    setup
}
