// SPDX-License-Identifier: GPL-2.0
//! Declaring a config field is a promise about the device (when the field
//! exists): it needs `unsafe`, so a driver cannot make one up.
// expect: E0133
// expect: requires unsafe

use crate::kapi::{virtio::Field, virtio_balloon::Layout};

const POISON_ALWAYS: Field<Layout, u32> = config_field!(Layout, poison_val: u32);

fn misuse() -> Field<Layout, u32> {
    POISON_ALWAYS
}
