// SPDX-License-Identifier: GPL-2.0
//! A config field is accessed with its own width: reading the 32-bit
//! `num_pages` as 16 bits does not build.
// expect: E0080
// expect: config field read with a type of another width

use crate::kapi::{virtio::Field, virtio_balloon::Layout};

// SAFETY: (the claim about presence is right; the width is not)
const NARROW: Field<Layout, u16> = unsafe { config_field!(Layout, num_pages: u16) };

fn misuse() -> Field<Layout, u16> {
    NARROW
}
