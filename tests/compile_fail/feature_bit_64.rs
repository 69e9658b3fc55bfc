// SPDX-License-Identifier: GPL-2.0
//! A feature bit of 64 or more does not exist (the virtio core BUG()s on
//! one in a driver's table): making one is a build error.
// expect: E0080
// expect: virtio feature bits are below 64

use crate::kapi::virtio::Feature;

const BAD: Feature = Feature::new(64);

fn misuse() -> Feature {
    BAD
}
