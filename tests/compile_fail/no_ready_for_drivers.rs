// SPDX-License-Identifier: GPL-2.0
//! The layer makes the device live (DRIVER_OK) exactly once per probe and
//! restore; a driver cannot do it again (the core WARNs on a second time).
// expect: E0599
// expect: no method named `ready` found

use crate::kapi::virtio::{Core, Device};

fn misuse(dev: &Device<Core>) {
    dev.ready();
}
