// SPDX-License-Identifier: GPL-2.0

//! The balloon driver proper, written against the safe abstractions in
//! `kapi` only.
//!
//! One work item on the system freezable workqueue follows the host's
//! target: each run reads `num_pages`, moves the balloon one round (up to
//! [`logic::MSGS_PER_KICK`] messages of at most 256 frames) towards it, and
//! queues itself again until `actual` equals the target. The balloon lock
//! ([`State`]) serialises everything that talks to the host; page migration
//! only ever tries it.
//!
//! Words used with one meaning each: *inflate* and *deflate* move pages
//! into and out of the balloon (the host is told); *drain* deflates all;
//! *publish* writes `actual` to the device; *report* is free page
//! reporting; *hint* is free page hinting, whose blocks are *freed* back to
//! the guest.
//!
//! This file holds what every part shares: the queues, the state under the
//! balloon lock and the driver data ([`Shared`]). Each concept has a file
//! of its own below `balloon/`, and they form one namespace (each starts
//! with `use super::*`):
//!
//! | file | what |
//! | --- | --- |
//! | `driver.rs` | probe, remove, freeze, restore, the config and queue callbacks |
//! | `size.rs` | the work that follows the host's target |
//! | `inflate.rs` | inflation rounds, allocated ahead on another CPU |
//! | `floor.rs` | the guest floor inflation stops at |
//! | `workingset.rs` | working-set protection: holding while inflation evicts the working set |
//! | `deflate.rs` | deflation, freeing on both CPUs, draining |
//! | `migrate.rs` | balloon pages moved by compaction or offlining |
//! | `oom.rs` | deflate-on-OOM |
//! | `stats.rs` | memory statistics for the host |
//! | `free_page_reporting.rs` | free page reporting |
//! | `free_page_hinting.rs` | free page hinting and its shrinker |
//! | `counters.rs` | counters, fault knobs, once-per-episode messages |
//! | `sysfs.rs` | the driver's state in sysfs |
#![forbid(unsafe_code)]

use crate::kapi::{
    balloon::{BalloonPages, DeflatedPage, Migrate, Migrated, Migration, NewPage},
    batch::Batch,
    debugfs::CounterFiles,
    mm::{self, VmEvent},
    oom::{OomHandler, OomNotifier},
    pages::{self, PageBlock, PageBlocks},
    reporting::{self, PageReporting, ReportHandler, ReportedRanges},
    shrinker::{ShrinkHandler, Shrinker},
    sync::{cond_resched, msleep, Mutex},
    virtio::{
        self,
        queue::{
            Bundle, Either, OutBuf, PolledQueue, PostedQueue, QueueId, QueueSetup, SyncQueue,
            WaitedQueue,
        },
        Bound, Config, Core, Device, Feature, Validate,
    },
    virtio_balloon::{self as vb, feature},
    wakeup::WakeupEvents,
    work::{self, Next, OwnedQueue, Running, Work, WorkHandler},
};
use crate::logic::{self, hint, FeatureList, MemSnapshot, Step, MSGS_PER_KICK, MSG_BYTES};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use kernel::{
    c_str,
    device::Device as GenericDevice,
    fmt,
    page::PAGE_SIZE,
    prelude::*,
    str::{CStr, CString},
    sync::Arc,
    time::Ktime,
    types::ARef,
};

/// Feature bits the driver negotiates: exactly those it implements.
const FEATURES: [Feature; 6] = [
    feature::MUST_TELL_HOST,
    feature::STATS_VQ,
    feature::DEFLATE_ON_OOM,
    feature::FREE_PAGE_HINT,
    feature::PAGE_POISON,
    feature::REPORTING,
];

/// Kinds of wakeup events: the host asked for a new size, or for stats.
const WAKE_ADJUST: u32 = 1 << 0;
const WAKE_STATS: u32 = 1 << 1;

mod counters;
mod deflate;
mod driver;
mod floor;
mod free_page_hinting;
mod free_page_reporting;
mod inflate;
mod migrate;
mod oom;
mod size;
mod stats;
mod sysfs;
mod workingset;

use self::{
    counters::*, deflate::*, floor::*, free_page_hinting::*, free_page_reporting::*, inflate::*,
    oom::*, size::*, stats::*, workingset::*,
};
pub(crate) use driver::Balloon;

/// Buffers of the free page queue: command ids (device-readable) and
/// hinted blocks (handed to the host).
type FreePageBuf = Either<OutBuf, PageBlock>;

/// An inflate message: the frames (what the host reads) and the kernel
/// pages they describe, which stay with the message until the host has
/// taken it. Migration sends one frame and no page.
type InflateMsg = Bundle<OutBuf, Batch<NewPage>>;

/// The device's virtqueues.
struct Queues {
    /// Inflate messages are handed over and collected after the next
    /// round's pages are allocated ([`settle`]).
    inflate: WaitedQueue<InflateMsg>,
    /// [`MSGS_PER_KICK`] inflate messages, with room for a message's pages,
    /// made with the queues (never while memory is short); those not on the
    /// ring wait here.
    inflate_spare: Batch<KBox<InflateMsg>>,
    deflate: SyncQueue,
    stats: Option<PostedQueue<OutBuf>>,
    free_page: Option<PolledQueue<FreePageBuf>>,
    reporting: Option<SyncQueue>,
}

/// Declares the queues in the device's order and creates them.
fn set_up_queues(dev: &Device<Core>, mut setup: QueueSetup<'_>) -> Result<Queues> {
    let per_msg = logic::pages_per_msg(logic::frames_per_page(PAGE_SIZE).ok_or(EINVAL)?);
    let mut inflate_spare = Batch::with_capacity(MSGS_PER_KICK)?;
    for _ in 0..MSGS_PER_KICK {
        let msg = Bundle {
            buf: OutBuf::new(MSG_BYTES)?,
            with: Batch::with_capacity(per_msg)?,
        };
        // The batch has room for exactly these.
        let _ = inflate_spare.push(KBox::new(msg, GFP_KERNEL)?);
    }
    let inflate = setup.waited(c_str!("inflate"))?;
    let deflate = setup.sync(c_str!("deflate"))?;
    let stats = if dev.has_feature(feature::STATS_VQ) {
        Some(setup.posted(c_str!("stats"))?)
    } else {
        setup.skip()?;
        None
    };
    // Polled, as in the C driver: nothing waits on it.
    let free_page = if dev.has_feature(feature::FREE_PAGE_HINT) {
        Some(setup.polled(c_str!("free_page_vq"))?)
    } else {
        setup.skip()?;
        None
    };
    let reporting = if dev.has_feature(feature::REPORTING) {
        Some(setup.sync(c_str!("reporting_vq"))?)
    } else {
        setup.skip()?;
        None
    };
    setup
        .find()
        .inspect_err(|e| dev_err!(dev, "cannot set up virtqueues: error {}\n", e.to_errno()))?;
    // Smallest rings, as the C driver checks: a hinting run keeps one entry
    // for its stop id, so it needs two; the allocator reports up to
    // CAPACITY ranges at once, a descriptor each.
    let sizes = [
        ("free page", free_page.as_ref().map(|q| q.ring_size()), 2),
        (
            "reporting",
            reporting.as_ref().map(|q| q.ring_size()),
            reporting::CAPACITY,
        ),
    ];
    for (what, size, need) in sizes {
        if let Some(size) = size.filter(|&s| s < need) {
            dev_err!(dev, "{} queue has {} entries, needs {}\n", what, size, need);
            return Err(ENOSPC);
        }
    }
    Ok(Queues {
        inflate,
        inflate_spare,
        deflate,
        stats,
        free_page,
        reporting,
    })
}

/// What the balloon lock protects.
struct State {
    /// The device's queues; `None` once frozen or being removed.
    queues: Option<Queues>,
    /// 4 KiB frames in the balloon, isolated pages included.
    held: u64,
    /// 4 KiB frames on their way in: on the inflate queue, not yet taken by
    /// the host, so neither in the balloon nor counted in `held`.
    inflating: u64,
    /// Message buffer: [`MSGS_PER_KICK`] messages of [`MSG_BYTES`].
    msg: OutBuf,
    /// Pages on their way out of the balloon.
    out: Batch<DeflatedPage>,
    /// The chunk of the free work's batch this CPU frees ([`free_chunk`]).
    chunk: Batch<DeflatedPage>,
    /// How much the next OOM notification deflates.
    ramp: logic::oom::Ramp,
}

/// Everything the driver shares between its work, callbacks and page
/// migration. It is the driver data of the [`BalloonPages`].
#[pin_data]
struct Shared {
    dev: ARef<GenericDevice>,
    config: Config<vb::Layout>,
    /// 4 KiB frames per kernel page.
    fpp: u32,
    stats: Arc<Counters>,
    knobs: Arc<Knobs>,
    notes: Notes,
    /// Set when the host could not be told something: the device is broken
    /// or gone. No memory is taken for it until the queues are set up again.
    host_gone: AtomicBool,
    /// Inflation rounds in a row that ran out of memory (only the update
    /// work uses it): the retry waits longer with each.
    alloc_failures_in_a_row: AtomicU32,
    /// Set when an OOM notification deflated the balloon: inflation waits
    /// for the host's next target instead of taking the memory right back.
    oom_pause: AtomicBool,
    /// Whether inflation is held at the guest floor.
    floor: Floor,
    /// The working set's refaults as inflation last saw them. Innermost:
    /// taken by the update work (alone, or under the balloon lock) and by
    /// sysfs readers; nothing is taken or allocated under it.
    #[pin]
    workingset: Mutex<logic::workingset::Monitor>,
    /// The balloon lock.
    #[pin]
    state: Mutex<State>,
    /// Gives deflated pages back to the guest on another CPU.
    freer: Freer,
    /// Pages allocated for the next inflation, before they are enqueued
    /// (only the update work uses it; taken before the balloon lock).
    #[pin]
    scratch: Mutex<Batch<NewPage>>,
    /// Allocates the round after this one on another CPU.
    filler: Filler,
    hint_cmd: HintCmd,
    /// Hinted blocks on the free page queue (the host has not returned
    /// them yet); changed under the balloon lock.
    hints_in_flight: AtomicU64,
    /// The stats queue, as [`virtio::Driver::buffers_used`] names it.
    stats_queue: Option<QueueId>,
    /// Hinted blocks the host has returned, held until it is done with
    /// them. Innermost lock: taken under the balloon lock (when the free
    /// page queue is reaped) but never the other way round, and never held
    /// across an allocation; the shrinker only tries it.
    #[pin]
    hints: Mutex<PageBlocks>,
    /// Keeps the system awake while a request of the host is pending.
    #[pin]
    wakeup: WakeupEvents,
}

/// The balloon: its pages and the driver data.
type BalloonCore = BalloonPages<Shared>;

impl Shared {
    /// Writes `actual` to the device (if it still has queues) and mirrors it
    /// in the counters.
    fn publish(&self, st: &State) {
        // `held` never exceeds `logic::max_frames`, which fits in 32 bits.
        let actual = st.held.min(u32::MAX.into()) as u32;
        if st.queues.is_some() {
            // A device that is gone has no `actual` to update.
            let _ = self.config.write(vb::ACTUAL, actual);
        }
        self.stats.actual_frames.store(st.held, Ordering::Relaxed);
    }

    /// Sends the messages of `msg` whose lengths are `lens` on `vq`, counting
    /// them in `counter`, and waits for the host to take them. False if the
    /// host could not be told (the device is broken or gone); nothing more
    /// is sent then until the queues are set up again.
    fn tell(&self, vq: &mut SyncQueue, msg: &OutBuf, lens: &[usize], counter: &AtomicU64) -> bool {
        if self.host_gone.load(Ordering::Acquire) {
            return false;
        }
        let mut parts = [(0usize, 0usize); MSGS_PER_KICK];
        let mut n = 0usize;
        for (m, &len) in lens.iter().enumerate().take(MSGS_PER_KICK) {
            if len != 0 {
                parts[n] = (m * MSG_BYTES, len);
                n += 1;
            }
        }
        let mut first = 0usize;
        while first < n {
            match vq.send(msg, &parts[first..n]) {
                Ok(sent) => {
                    add(counter, sent.count as u64);
                    add(&self.stats.host_odd_used_len, sent.odd_lengths.into());
                    first += sent.count;
                }
                Err(e) => {
                    self.lost_host(e, n - first);
                    return false;
                }
            }
        }
        true
    }

    /// Sends one inflate message that carries no page (migration's, which
    /// checked that the host can hear) and waits for the host to take it;
    /// false as for [`Shared::tell`].
    fn tell_inflate(&self, q: &mut Queues, msg: KBox<InflateMsg>) -> bool {
        if let Err((msg, e)) = q.inflate.add(msg) {
            let _ = q.inflate_spare.push(msg);
            self.lost_host(e, 1);
            return false;
        }
        q.inflate.kick();
        add(&self.stats.inflate_msgs, 1);
        match q.inflate.wait() {
            Ok((msg, len)) => {
                self.returned(q, msg, len);
                true
            }
            Err(e) => {
                self.lost_host(e, 1);
                false
            }
        }
    }

    /// An inflate message the host returned (its pages already dealt
    /// with) waits for the next round; a used length other than 0 (the
    /// device writes nothing into it) is counted and otherwise ignored.
    fn returned(&self, q: &mut Queues, msg: KBox<InflateMsg>, len: u32) {
        if len != 0 {
            add(&self.stats.host_odd_used_len, 1);
        }
        // The spare batch has room for every message there is.
        let _ = q.inflate_spare.push(msg);
    }

    /// `msgs` messages did not reach the host (or the host did not return
    /// them) with error `e`: the device is broken or gone, and is sent
    /// nothing more until the queues are set up again. Said once.
    fn lost_host(&self, e: Error, msgs: usize) {
        add(&self.stats.host_errors, msgs as u64);
        self.host_gone.store(true, Ordering::Release);
        if self.notes.first(Note::SendError) {
            dev_err!(
                self.dev,
                "cannot send to the host (error {}); pages go back to the guest without it\n",
                e.to_errno()
            );
        }
    }

    /// The kernel pages just dequeued into `st.out` (`got` of them), the
    /// host told, go back to the guest; the balloon's count and the
    /// counters follow, and `actual` too with `publish` (the caller writes
    /// it otherwise). With `later`, the free work gives them back on
    /// another CPU while this one goes on with the next round (what it has
    /// not freed of the last batch by then, this CPU frees beside it);
    /// otherwise they are back, with every page the free work had, before
    /// the host sees the new size.
    fn free_deflated(&self, st: &mut State, got: usize, later: bool, publish: bool) {
        let freeing = &*self.freer.batch;
        // What the free work has not got to yet: this CPU frees its share
        // beside it.
        while free_chunk(&freeing.pages, &mut st.chunk) {}
        if later {
            core::mem::swap(&mut st.out, &mut *freeing.pages.lock());
            self.freer.work.queue();
        } else {
            // And the chunk the work may still be freeing.
            drop(freeing.busy.lock());
            st.out.clear();
        }
        st.held -= got as u64 * u64::from(self.fpp);
        add(&self.stats.deflated_pages, got as u64);
        if publish {
            self.publish(st);
        }
    }

    /// The host's free page hint command id (re-read only after a config
    /// change: a read is a trap to the host).
    fn hint_cmd_id(&self) -> u32 {
        self.hint_cmd.current(|| {
            let id = self
                .config
                .read(vb::FREE_PAGE_HINT_CMD_ID)
                .unwrap_or(hint::CMD_ID_STOP);
            self.stats.hint_cmd_id.store(id.into(), Ordering::Relaxed);
            id
        })
    }
}

/// The host sees the final `actual` (0 once drained), and the driver lets
/// go of the queues (the layer resets the device and deletes them after).
fn stop_queues(core: &BalloonCore) {
    let sh = core.data();
    // No round follows: what was allocated for one goes back.
    sh.filler.clear();
    let mut st = sh.state.lock();
    settle(core, &mut st);
    sh.publish(&st);
    st.queues = None;
}
