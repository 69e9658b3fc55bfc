// SPDX-License-Identifier: GPL-2.0

//! The balloon driver proper, written against the safe abstractions in
//! `kapi` only.
#![forbid(unsafe_code)]

use crate::kapi::{
    virtio::{self, feature, id, Device, DeviceRef, QueueSpec, Virtqueues},
    work::{Next, Queue, Work, WorkHandler},
};
use crate::logic::{self, FeatureList};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kernel::{
    c_str, new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};

/// Feature bits the driver negotiates today. Later features are added here
/// as they are implemented, never before.
const FEATURES: [u32; 1] = [feature::BALLOON_MUST_TELL_HOST];

/// State shared by the driver's work items and callbacks.
#[pin_data]
struct Core {
    dev: DeviceRef,
    /// 4 KiB frames per kernel page.
    frames_per_page: u32,
    /// The host's latest target, in 4 KiB frames (as read from config).
    host_target: AtomicU32,
    /// How many config changes the driver has seen.
    config_changes: AtomicU64,
    /// Everything that needs the balloon lock.
    #[pin]
    state: Mutex<State>,
}

struct State {
    vqs: Virtqueues,
}

impl Core {
    /// Reads the host's target and records it.
    fn refresh_target(&self) -> u32 {
        let target = self.dev.read_config_le32(logic::config::NUM_PAGES);
        self.host_target.store(target, Ordering::Relaxed);
        target
    }
}

/// The work that follows the host's target.
struct UpdateSize(Arc<Core>);

impl WorkHandler for UpdateSize {
    fn run(&self) -> Next {
        let core = &self.0;
        let target = core.refresh_target();
        let rounded = logic::round_target(target, core.frames_per_page);
        // Inflation and deflation arrive with the balloon itself; until then
        // the driver only follows and reports the host's request.
        if rounded != 0 {
            dev_info!(
                core.dev,
                "host asks for {} frames ({} KiB); inflation is not implemented yet\n",
                rounded,
                rounded * 4
            );
        }
        Next::Idle
    }
}

/// Per-device driver data.
pub(crate) struct Balloon {
    core: Arc<Core>,
    update: Work<UpdateSize>,
}

impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const DEVICE_ID: u32 = id::BALLOON;
    const FEATURES: &'static [u32] = &FEATURES;

    fn validate(dev: &Device) -> Result {
        // As the C driver: no indirect descriptors (page reporting must not
        // allocate in virtqueue_add) and no IOMMU platform access.
        dev.clear_feature(feature::RING_INDIRECT_DESC);
        dev.clear_feature(feature::ACCESS_PLATFORM);
        Ok(())
    }

    fn probe(dev: &Device) -> Result<KBox<Self>> {
        let Some(frames_per_page) = logic::frames_per_page(kernel::page::PAGE_SIZE) else {
            dev_err!(
                dev,
                "page size {} is not a multiple of 4 KiB\n",
                kernel::page::PAGE_SIZE
            );
            return Err(EINVAL);
        };
        let specs = [
            QueueSpec {
                name: c_str!("inflate"),
                used: true,
            },
            QueueSpec {
                name: c_str!("deflate"),
                used: true,
            },
        ];
        let vqs = Virtqueues::find(dev, &specs).inspect_err(|e| {
            dev_err!(dev, "cannot set up virtqueues: error {}\n", e.to_errno());
        })?;
        let core = Arc::pin_init(
            pin_init!(Core {
                dev: dev.get_ref(),
                frames_per_page,
                host_target: AtomicU32::new(0),
                config_changes: AtomicU64::new(0),
                state <- new_mutex!(State { vqs }, "virtio_balloon_rs::balloon_lock"),
            }),
            GFP_KERNEL,
        )?;
        let update = Work::new(Queue::system_freezable(), UpdateSize(core.clone()))?;
        Ok(KBox::new(Self { core, update }, GFP_KERNEL)?)
    }

    fn ready(&self, dev: &Device) {
        dev_info!(
            dev,
            "virtio_balloon_rs bound to virtio{}: features {} ({:#x}), {} KiB pages\n",
            dev.index(),
            FeatureList(dev.features()),
            dev.features(),
            kernel::page::PAGE_SIZE / 1024
        );
        // A target set before the driver came is followed at once.
        self.update.queue();
    }

    fn config_changed(&self, _dev: &Device) {
        self.core.config_changes.fetch_add(1, Ordering::Relaxed);
        self.update.queue();
    }

    fn remove(&self, dev: &Device) {
        // No work runs after this, and config changes no longer queue any.
        self.update.stop();
        // Reset the device and delete the queues before the data goes.
        self.core.state.lock().vqs.shutdown();
        dev_info!(
            dev,
            "virtio_balloon_rs unbound from virtio{}\n",
            dev.index()
        );
    }
}
