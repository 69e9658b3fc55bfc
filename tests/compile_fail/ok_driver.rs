// SPDX-License-Identifier: GPL-2.0
//! Control: a small virtio driver that uses kapi the intended way. It must
//! build, so that every other case fails for its misuse and not because
//! the harness is broken.
// expect-ok

use crate::kapi::{
    sync::Mutex,
    sysfs::Attr,
    virtio::{
        self,
        queue::{OutBuf, PostedQueue, QueueId, QueueSetup, SyncQueue},
        Bound, Core, Device, Feature, Validate,
    },
    virtio_balloon::{self as vb, feature},
};
use kernel::{c_str, prelude::*};

virtio_device_table!(CONTROL_IDS, [vb::DEVICE_ID]);

const FEATURES: [Feature; 1] = [feature::STATS_VQ];

#[pin_data]
pub(crate) struct Control {
    #[pin]
    q: Mutex<(SyncQueue, Option<PostedQueue<OutBuf>>)>,
    config: virtio::Config<vb::Layout>,
}

#[vtable]
impl virtio::Driver for Control {
    const NAME: &'static CStr = c_str!("vbrs_control");
    const ID_TABLE: virtio::IdTableRef = CONTROL_IDS.as_ref();
    const FEATURES: &'static [Feature] = &FEATURES;
    const ATTRIBUTES: &'static [Attr<Self>] = &[Attr {
        name: c_str!("target_frames"),
        show: |c, out| out.line(format_args!("{}", c.config.read(vb::NUM_PAGES)?)),
    }];
    const ATTRIBUTE_DIR: &'static CStr = c_str!("control");

    fn validate(dev: &Device<Validate>) -> Result {
        if dev.offers(feature::STATS_VQ) {
            dev.clear_feature(virtio::feature::RING_INDIRECT_DESC);
        }
        Ok(())
    }

    fn probe(dev: &Device<Core>, mut setup: QueueSetup<'_>) -> Result<Pin<KBox<Self>>> {
        let sync = setup.sync(c_str!("inflate"))?;
        setup.skip()?;
        let posted = if dev.has_feature(feature::STATS_VQ) {
            Some(setup.posted(c_str!("stats"))?)
        } else {
            None
        };
        setup.find()?;
        let config = dev.config()?;
        let _target = config.read(vb::NUM_PAGES)?;
        Ok(KBox::pin_init(
            try_pin_init!(Self {
                q <- new_mutex!((sync, posted)),
                config,
            }? Error),
            GFP_KERNEL,
        )?)
    }

    fn buffers_used(&self, _dev: &Device<Bound>, _q: QueueId) {}

    fn remove(&self, _dev: &Device<Core>) {
        let _ = self.config.write(vb::ACTUAL, 0);
        let mut q = self.q.lock();
        let buf = match OutBuf::new(4) {
            Ok(b) => b,
            Err(_) => return,
        };
        let _ = q.0.send(&buf, &[(0, 4)]);
    }
}
