// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, in Rust.
//!
//! The guest side of the virtio balloon (device ID 5): the host asks the
//! guest to give memory back (inflate) or lets it take memory again
//! (deflate). See README.md for what is implemented.

#[macro_use]
mod kapi;
mod balloon;
mod logic;

use kapi::virtio::Registration;
use kernel::prelude::*;

module! {
    type: BalloonModule,
    name: "virtio_balloon_rs",
    author: "virtio_balloon_rs developers",
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
}

// The devices the driver binds to; `modpost` makes the module's aliases
// from this table.
virtio_device_table!(BALLOON_IDS, [kapi::virtio_balloon::DEVICE_ID]);

struct BalloonModule {
    _driver: Registration<balloon::Balloon>,
}

impl kernel::Module for BalloonModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let driver = Registration::new(module).inspect_err(|e| {
            pr_err!(
                "cannot register the virtio driver: error {}\n",
                e.to_errno()
            );
        })?;
        Ok(Self { _driver: driver })
    }
}
