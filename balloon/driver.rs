// SPDX-License-Identifier: GPL-2.0

//! The driver's callbacks: probe sets everything up, remove and freeze
//! give every page back, restore sets the queues up again.

use super::*;

/// Per-device driver data. Fields drop in order: the callbacks from the
/// rest of the kernel first, then the works, then the balloon.
pub(crate) struct Balloon {
    /// Registered when REPORTING is negotiated.
    reporting: Option<Pin<KBox<PageReporting<ReportFree>>>>,
    /// Registered when DEFLATE_ON_OOM is negotiated.
    oom: Option<Pin<KBox<OomNotifier<OomDeflate>>>>,
    /// Registered when FREE_PAGE_HINT is negotiated.
    hint_shrinker: Option<Shrinker<HintShrink>>,
    hint: Option<Work<FreePageHint>>,
    /// Answers the host's stats requests (STATS_VQ).
    stats: Option<Work<StatsRefresh>>,
    update: Work<UpdateSize>,
    core: Arc<BalloonCore>,
    _debugfs: Option<CounterFiles<Counters>>,
}

/// Logs why registering `what` failed.
pub(super) fn registering<'a>(dev: &'a Device<Core>, what: &'a str) -> impl FnOnce(&Error) + 'a {
    move |e| dev_err!(dev, "cannot register {}: error {}\n", what, e.to_errno())
}

impl Balloon {
    /// The balloon's pages and the driver data.
    pub(super) fn core(&self) -> &BalloonCore {
        &self.core
    }

    /// The driver data.
    pub(super) fn shared(&self) -> &Shared {
        self.core.data()
    }
}

#[vtable]
impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const ID_TABLE: virtio::IdTableRef = crate::BALLOON_IDS.as_ref();
    const FEATURES: &'static [Feature] = &FEATURES;
    const ATTRIBUTES: &'static [crate::kapi::sysfs::Attr<Self>] = &sysfs::ATTRIBUTES;
    const ATTRIBUTE_DIR: &'static CStr = c_str!("balloon");

    fn validate(dev: &Device<Validate>) -> Result {
        // PAGE_POISON only when freed pages have a known content (poisoned
        // or zeroed) to tell the host about; without it, free page
        // reporting could change what a freed page holds, so it goes too.
        if !mm::want_init_on_free() && !mm::page_poisoning_enabled() {
            dev.clear_feature(feature::PAGE_POISON);
        } else if !dev.offers(feature::PAGE_POISON) {
            dev.clear_feature(feature::REPORTING);
        }
        // As the C driver: no indirect descriptors (page reporting must not
        // allocate in virtqueue_add) and no IOMMU platform access.
        dev.clear_feature(virtio::feature::RING_INDIRECT_DESC);
        dev.clear_feature(virtio::feature::ACCESS_PLATFORM);
        Ok(())
    }

    fn probe(dev: &Device<Core>, queues: QueueSetup<'_>) -> Result<Pin<KBox<Self>>> {
        let Some(fpp) = logic::frames_per_page(PAGE_SIZE) else {
            dev_err!(dev, "page size {} is not a multiple of 4 KiB\n", PAGE_SIZE);
            return Err(EINVAL);
        };
        // Without DEFLATE_ON_OOM the balloon's pages leave MemTotal.
        let account = !dev.has_feature(feature::DEFLATE_ON_OOM);
        // From here on, whatever fails: the layer tears the queues down
        // (resetting the device first), and what was made drops in reverse.
        let queues = set_up_queues(dev, queues)?;
        let stats_queue = queues.stats.as_ref().and_then(|q| q.id());
        let round = logic::pages_per_round(fpp);
        let state = State {
            queues: Some(queues),
            held: 0,
            inflating: 0,
            msg: OutBuf::new(MSGS_PER_KICK * MSG_BYTES)?,
            out: Batch::with_capacity(round)?,
            chunk: Batch::with_capacity(FREE_CHUNK)?,
            ramp: logic::oom::Ramp::new(),
        };
        let counters = Arc::new(Counters::default(), GFP_KERNEL)?;
        // (Inside the initialiser below, `dev` names the field.)
        let config = dev.config()?;
        let generic = ARef::from(dev.as_dev());
        let stats = counters.clone();
        let knobs = Arc::new(Knobs::default(), GFP_KERNEL)?;
        let shared_knobs = knobs.clone();
        let batch = Arc::pin_init(
            try_pin_init!(Freeing {
                pages <- new_mutex!(Batch::with_capacity(round)?, "Balloon::freeing"),
                busy <- new_mutex!(Batch::with_capacity(FREE_CHUNK)?, "Balloon::freeing_busy"),
            }? Error),
            GFP_KERNEL,
        )?;
        let freer = Freer {
            work: new_work!(
                work::system_unbound(),
                FreeDeflated(batch.clone()),
                "Balloon::free_deflated"
            )?,
            batch,
        };
        let ahead = Arc::pin_init(
            try_pin_init!(Ahead {
                want: AtomicUsize::new(0),
                pages <- new_mutex!(Batch::with_capacity(round)?, "Balloon::ahead"),
            }? Error),
            GFP_KERNEL,
        )?;
        let filler = Filler {
            work: new_work!(
                work::system_unbound(),
                FillAhead(ahead.clone()),
                "Balloon::fill_ahead"
            )?,
            ahead,
        };
        let core = Arc::pin_init(
            BalloonPages::new(
                account,
                try_pin_init!(Shared {
                    dev: generic.clone(),
                    config,
                    fpp,
                    stats,
                    knobs: shared_knobs,
                    notes: Notes(AtomicU32::new(0)),
                    host_gone: AtomicBool::new(false),
                    alloc_failures_in_a_row: AtomicU32::new(0),
                    oom_pause: AtomicBool::new(false),
                    floor: Floor::new(),
                    state <- new_mutex!(state, "Balloon::state"),
                    freer,
                    filler,
                    scratch <- new_mutex!(Batch::with_capacity(round)?, "Balloon::scratch"),
                    workingset <- new_mutex!(Default::default(), "Balloon::workingset"),
                    hint_cmd: HintCmd::new(),
                    hints_in_flight: AtomicU64::new(0),
                    stats_queue,
                    hints <- new_mutex!(PageBlocks::new(pages::MAX_ORDER)?, "Balloon::hints"),
                    wakeup <- WakeupEvents::new(generic),
                }? Error),
            ),
            GFP_KERNEL,
        )?;
        let sh = core.data();
        StatsPrimer::new(dev)?.send(sh, &mut sh.state.lock());
        if dev.has_feature(feature::PAGE_POISON) {
            let val = logic::poison_val(mm::want_init_on_free(), mm::PAGE_POISON);
            sh.config.write(vb::POISON_VAL, val)?;
        }
        let update = new_work!(
            work::system_freezable(),
            UpdateSize(core.clone()),
            "Balloon::update_size"
        )?;
        let stats = if dev.has_feature(feature::STATS_VQ) {
            Some(new_work!(
                work::system_freezable(),
                StatsRefresh(core.clone()),
                "Balloon::stats_refresh"
            )?)
        } else {
            None
        };
        let hint = if dev.has_feature(feature::FREE_PAGE_HINT) {
            let queue = OwnedQueue::freezable_cpu_intensive(c_str!("virtio_balloon_rs_hint"))?;
            Some(new_work!(
                work::On::Own(queue),
                FreePageHint {
                    core: core.clone(),
                    done_polls: AtomicU32::new(0),
                },
                "Balloon::free_page_hint"
            )?)
        } else {
            None
        };
        let oom = if account {
            None
        } else {
            let nb = OomNotifier::register(OomDeflate(core.clone()), logic::OOM_NOTIFY_PRIORITY)
                .inspect_err(registering(dev, "the OOM notifier"))?;
            Some(nb)
        };
        let reporting = if dev.has_feature(feature::REPORTING) {
            let r = PageReporting::register(
                ReportFree(core.clone()),
                logic::reporting_order(PAGE_SIZE),
            )
            .inspect_err(registering(dev, "free page reporting"))?;
            Some(r)
        } else {
            None
        };
        // Hinted blocks may go back under memory pressure at any time.
        let hint_shrinker = if hint.is_some() {
            let s = Shrinker::register(c_str!("virtio_balloon_rs"), HintShrink(core.clone()))
                .inspect_err(registering(dev, "the free page hint shrinker"))?;
            Some(s)
        } else {
            None
        };
        let debugfs = match dev.debugfs_dir() {
            Some(parent) => {
                let name = CString::try_from_fmt(fmt!("virtio{}", dev.index()))?;
                #[allow(unused_mut)]
                let mut files = CounterFiles::new(&name, &parent, counters);
                #[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
                {
                    files.add_knobs(dev.fault_knobs())?;
                    files.add_knobs(knobs)?;
                }
                #[cfg(not(CONFIG_FAULT_INJECTION_DEBUG_FS))]
                let _ = knobs;
                Some(files)
            }
            None => None,
        };
        dev_info!(
            dev,
            "bound: features {} ({:#x}), {} KiB pages\n",
            FeatureList(dev.features()),
            dev.features(),
            PAGE_SIZE / 1024
        );
        Ok(KBox::pin(
            Self {
                reporting,
                oom,
                hint_shrinker,
                hint,
                stats,
                update,
                core,
                _debugfs: debugfs,
            },
            GFP_KERNEL,
        )?)
    }

    fn ready(&self, _dev: &Device<Core>) {
        let sh = self.core.data();
        // The host sees what the balloon holds (0 after probe and restore)
        // and a target set before the driver came is followed at once.
        sh.publish(&sh.state.lock());
        sh.wakeup.start(WAKE_ADJUST);
        self.update.queue();
        if let Some(hint) = &self.hint {
            sh.hint_cmd.mark_stale();
            hint.queue();
        }
    }

    fn config_changed(&self, _dev: &Device<Bound>) {
        let sh = self.core.data();
        add(&sh.stats.config_changes, 1);
        // A new target from the host lifts a pause after OOM deflation.
        sh.oom_pause.store(false, Ordering::Release);
        sh.wakeup.start(WAKE_ADJUST);
        self.update.queue();
        if let Some(hint) = &self.hint {
            sh.hint_cmd.mark_stale();
            hint.queue();
        }
    }

    fn buffers_used(&self, _dev: &Device<Bound>, queue: QueueId) {
        let sh = self.core.data();
        // The host returned the stats buffer: it wants new stats.
        if let (Some(stats), true) = (&self.stats, sh.stats_queue == Some(queue)) {
            sh.wakeup.start(WAKE_STATS);
            stats.queue();
        }
    }

    fn remove(&self, dev: &Device<Core>) {
        // No report may reach the host once the queues are going, and no
        // shrinker call may see a half-torn-down balloon: off their chains
        // first (each waits for a call running).
        if let Some(r) = &self.reporting {
            r.unregister();
        }
        if let Some(s) = &self.hint_shrinker {
            s.unregister();
        }
        // No work runs after this (a hinting run ends at its next block),
        // and config changes no longer queue any.
        self.update.stop();
        if let Some(stats) = &self.stats {
            stats.stop();
        }
        if let Some(hint) = &self.hint {
            hint.stop();
        }
        let sh = self.core.data();
        // With the shrinker gone, nothing else could give hinted memory
        // back while the balloon drains: do it first.
        let blocks = free_all_hints(sh, None);
        // No work will finish what is pending: let the system sleep.
        sh.wakeup.clear();
        let pages = {
            let mut st = sh.state.lock();
            settle(&self.core, &mut st);
            logic::frames_to_pages(st.held, sh.fpp)
        };
        // The OOM notifier stays on its chain while the balloon drains: an
        // OOM meanwhile still gets its MiB (both deflate under the balloon
        // lock, host told first) instead of a kill between unregistering
        // and the pages coming back, a window the C driver has. It is off
        // the chain (waiting for a call running) before the queues go.
        drain(&self.core);
        if let Some(oom) = &self.oom {
            oom.unregister();
        }
        stop_queues(&self.core);
        if blocks != 0 {
            dev_info!(dev, "{} free page hint blocks given back\n", blocks);
        }
        dev_info!(dev, "unbound; {} pages given back\n", pages);
    }

    fn freeze(&self, _dev: &Device<Core>) -> Result {
        // The freezable works are frozen already. The hinted blocks go back
        // (the image need not hold them), then every page (the host told
        // first), and the driver lets go of the queues (restore sets them
        // up again). Remove does the same with the OOM notifier taken off
        // its chain in between. (Only a kernel with CONFIG_PM_SLEEP calls
        // this; nothing else may live for it alone, or kernels without
        // sleep warn that it is unused.)
        free_all_hints(self.core.data(), None);
        drain(&self.core);
        stop_queues(&self.core);
        Ok(())
    }

    fn restore(&self, dev: &Device<Core>, queues: QueueSetup<'_>) -> Result {
        let sh = self.core.data();
        let queues = set_up_queues(dev, queues)?;
        let primer = StatsPrimer::new(dev)?;
        let mut st = sh.state.lock();
        st.queues = Some(queues);
        // The old queues were collected before they went (`stop_queues`).
        st.inflating = 0;
        // New queues, after a reset: the host can hear again, and the
        // blocks the old ones held were dropped with them.
        sh.host_gone.store(false, Ordering::Release);
        sh.notes.clear(Note::SendError);
        sh.hints_in_flight.store(0, Ordering::Relaxed);
        note_held(sh, &sh.hints.lock());
        primer.send(sh, &mut st);
        // Freeze gave every page back: follow the host's target again, as
        // the C driver does, even after an OOM deflation (`ready` follows).
        sh.oom_pause.store(false, Ordering::Release);
        Ok(())
    }
}
