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
    alias: ["virtio:d00000005v*"],
}

struct BalloonModule {
    driver: Option<Registration<balloon::Balloon>>,
}

impl kernel::Module for BalloonModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        kapi::debugfs::init_root(kernel::c_str!("virtio_balloon_rs"));
        let driver = Registration::new(module).inspect_err(|e| {
            kapi::debugfs::remove_root();
            pr_err!(
                "cannot register the virtio driver: error {}\n",
                e.to_errno()
            );
        })?;
        Ok(Self {
            driver: Some(driver),
        })
    }
}

impl Drop for BalloonModule {
    fn drop(&mut self) {
        // Unbind every device (their counter directories go with them)
        // before the module's debugfs directory goes.
        self.driver = None;
        kapi::debugfs::remove_root();
    }
}
