// SPDX-License-Identifier: GPL-2.0
//! `config_changed` runs under a spinlock: the device it is handed offers
//! nothing that may sleep, such as config space access.
// expect: E0599
// expect: no method named `config` found

use crate::kapi::{
    virtio::{Bound, Device},
    virtio_balloon::Layout,
};

fn misuse(dev: &Device<Bound>) {
    let _ = dev.config::<Layout>();
}
