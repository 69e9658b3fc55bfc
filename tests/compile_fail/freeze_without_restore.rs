// SPDX-License-Identifier: GPL-2.0
//! The layer tears a device's queues down at freeze and sets them up again
//! only through restore: a driver that implements freeze without restore
//! (which would be left with no queues after sleeping) does not build.
// expect: E0080
// expect: a virtio driver implements both freeze and restore, or neither
// expect: while instantiating `fn Adapter::<Half>::fill`
// expect-at: kapi/virtio/driver.rs

use crate::kapi::{
    virtio::{self, queue::QueueSetup, Core, Device, Feature, Registration},
    virtio_balloon as vb,
};
use kernel::{c_str, prelude::*};

virtio_device_table!(HALF_IDS, [vb::DEVICE_ID]);

struct Half;

#[vtable]
impl virtio::Driver for Half {
    const NAME: &'static CStr = c_str!("vbrs_half");
    const ID_TABLE: virtio::IdTableRef = HALF_IDS.as_ref();
    const FEATURES: &'static [Feature] = &[];

    fn probe(_dev: &Device<Core>, setup: QueueSetup<'_>) -> Result<Pin<KBox<Self>>> {
        setup.find()?;
        Ok(KBox::pin(Half, GFP_KERNEL)?)
    }

    fn remove(&self, _dev: &Device<Core>) {}

    fn freeze(&self, _dev: &Device<Core>) -> Result {
        Ok(())
    }
}

// Registering the driver (a function pointer kept in a `#[used]` static is
// built even though nothing calls it).
#[used]
static REGISTER: fn(&'static ThisModule) -> Result<Registration<Half>> = Registration::<Half>::new;
