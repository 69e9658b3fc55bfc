// SPDX-License-Identifier: GPL-2.0
//! Two attributes of a driver with the same name would make sysfs refuse
//! the second at every probe: the names are checked when the driver is
//! registered, at build time.
// expect: E0080
// expect: sysfs attribute names are file names (not empty, no '/'), each used once
// expect: while instantiating `fn driver::Registration::<Twice>::new`
// expect-at: kapi/virtio/driver.rs

use crate::kapi::{
    sysfs::Attr,
    virtio::{self, queue::QueueSetup, Core, Device, Feature, Registration},
    virtio_balloon as vb,
};
use kernel::{c_str, prelude::*};

virtio_device_table!(TWICE_IDS, [vb::DEVICE_ID]);

struct Twice;

#[vtable]
impl virtio::Driver for Twice {
    const NAME: &'static CStr = c_str!("vbrs_twice");
    const ID_TABLE: virtio::IdTableRef = TWICE_IDS.as_ref();
    const FEATURES: &'static [Feature] = &[];
    const ATTRIBUTES: &'static [Attr<Self>] = &[
        Attr {
            name: c_str!("size"),
            show: |_, out| out.line(format_args!("1")),
        },
        Attr {
            name: c_str!("size"),
            show: |_, out| out.line(format_args!("2")),
        },
    ];

    fn probe(_dev: &Device<Core>, setup: QueueSetup<'_>) -> Result<Pin<KBox<Self>>> {
        setup.find()?;
        Ok(KBox::pin(Twice, GFP_KERNEL)?)
    }

    fn remove(&self, _dev: &Device<Core>) {}
}

// Registering the driver (a function pointer kept in a `#[used]` static is
// built even though nothing calls it).
#[used]
static REGISTER: fn(&'static ThisModule) -> Result<Registration<Twice>> =
    Registration::<Twice>::new;
