// SPDX-License-Identifier: GPL-2.0
//! A counted reference keeps the device in memory, not bound to the
//! driver: it offers no bound-only state such as the negotiated features.
// expect: E0599
// expect: no method named `features` found

use crate::kapi::virtio::Device;
use kernel::types::ARef;

fn misuse(dev: ARef<Device>) -> u64 {
    dev.features()
}
