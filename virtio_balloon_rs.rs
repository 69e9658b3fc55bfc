// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, in Rust.
//!
//! The guest side of the virtio balloon (device ID 5): the host asks the
//! guest to give memory back (inflate) or lets it take memory again
//! (deflate). See README.md for what is implemented.

// The driver data's pin-initialiser (`try_pin_init!` in `balloon.rs`) has
// more fields than the default macro recursion limit (128) expands.
#![recursion_limit = "256"]

#[macro_use]
mod kapi;
mod balloon;
mod logic;

use kapi::{param::UintParam, virtio::Registration};
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

// Deflate-on-OOM: how much each OOM notification gives back (README.md,
// "Deflate on OOM"). Both may be changed at any time in
// /sys/module/virtio_balloon_rs/parameters/.
pub(crate) static OOM_DEFLATE_MAX_MIB: UintParam =
    UintParam::new(logic::oom::DEFAULT_MAX_MIB, 1, logic::oom::LIMIT_MAX_MIB);
module_param!(
    crate::OOM_DEFLATE_MAX_MIB,
    "oom_deflate_max_mib",
    0o644,
    "Most MiB one OOM notification deflates (default 64; 1 to 1024). The first of a burst deflates 1 MiB and each next one twice the last, up to this; 1 keeps the C driver's fixed 1 MiB"
);
pub(crate) static OOM_QUIET_MS: UintParam =
    UintParam::new(logic::oom::DEFAULT_QUIET_MS, 1, logic::oom::LIMIT_QUIET_MS);
module_param!(
    crate::OOM_QUIET_MS,
    "oom_quiet_ms",
    0o644,
    "Milliseconds without an OOM notification that end a burst, so the next one deflates 1 MiB again (default 1000; 1 to 60000)"
);

// The guest floor (README.md, "For operators"): inflation stops while the
// guest's available memory is at it. May be changed at any time.
pub(crate) static FLOOR_MIB: UintParam =
    UintParam::new(logic::floor::DEFAULT_MIB, 0, logic::floor::LIMIT_MIB);
module_param!(
    crate::FLOOR_MIB,
    "floor_mib",
    0o644,
    "MiB of available memory (MemAvailable) inflation leaves the guest (default 0; 0 to 16777216). 0 is automatic: 1/32 of RAM, at least 4 MiB. Held at the floor, inflation resumes when a quarter more (1 to 64 MiB) is available"
);

// Working-set protection (README.md, "For operators"): off by default, as
// the host's target wins in C. May be changed at any time.
pub(crate) static PROTECT_WORKING_SET: UintParam = UintParam::new(0, 0, 1);
module_param!(
    crate::PROTECT_WORKING_SET,
    "protect_working_set",
    0o644,
    "Hold inflation while it evicts the guest's working set: refaults judged recent (workingset_activate_*) at 4 MiB/s or more (default 0; 0 to 1). 1 holds, and retries every second; 0 follows the host's target as the C driver"
);

// The stats tags the host is sent (README.md, "For operators"); read at
// each stats request.
pub(crate) static STATS_TAGS: UintParam = UintParam::new(
    logic::stat::NR as u32,
    logic::stat::KNOWN_EVERYWHERE,
    logic::stat::NR as u32,
);
module_param!(
    crate::STATS_TAGS,
    "stats_tags",
    0o644,
    "Send the host the memory stats whose tags are below this (default 16; 10 to 16). 16 sends all, as the C driver; 10 sends tags 0 to 9, which every host knows"
);

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
