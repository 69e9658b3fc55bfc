// SPDX-License-Identifier: GPL-2.0
//! The device seen in `validate` cannot be shared with another task: it
//! rewrites the feature word without synchronisation.
// expect: E0277
// expect: cannot be shared between threads safely

use crate::kapi::virtio::{Device, Validate};

fn needs_sync<T: Sync + ?Sized>(_: &T) {}

fn misuse(dev: &Device<Validate>) {
    needs_sync(dev);
}
