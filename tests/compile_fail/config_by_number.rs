// SPDX-License-Identifier: GPL-2.0
//! Config space is read by typed field, not by offset: a number (which
//! could point past the device's config space) is not accepted.
// expect: E0308
// expect: mismatched types

use crate::kapi::{virtio::Config, virtio_balloon::Layout};

fn misuse(config: &Config<Layout>) -> Result<u32, kernel::error::Error> {
    config.read(4)
}
