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
#![forbid(unsafe_code)]

use crate::kapi::{
    balloon::{BalloonPages, Batch, DeflatedPage, Migrate, Migrated, Migration, NewPage},
    debugfs::{self, CounterDir},
    hint::{self as hintmem, HintBlock, HintBlocks},
    mm,
    oom::{OomHandler, OomNotifier},
    reporting::{self, PageReporting, ReportHandler, ReportedRanges},
    shrinker::{ShrinkHandler, Shrinker},
    sync::{cond_resched, msleep, LockKey, Mutex},
    virtio::{
        self, feature, id, Device, DeviceRef, HintCmd, OutBuf, QueueSpec, UsedHandler, Virtqueue,
        Virtqueues,
    },
    wakeup::WakeupEvents,
    work::{Next, Queue, Work, WorkHandler},
};
use crate::logic::{self, hint, FeatureList, MemSnapshot, Step, MSGS_PER_KICK, MSG_BYTES};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::{
    c_str, fmt,
    page::PAGE_SIZE,
    prelude::*,
    str::{CStr, CString},
    sync::Arc,
};

/// Feature bits the driver negotiates today. Later features are added here
/// as they are implemented, never before.
const FEATURES: [u32; 6] = [
    feature::BALLOON_MUST_TELL_HOST,
    feature::BALLOON_STATS_VQ,
    feature::BALLOON_DEFLATE_ON_OOM,
    feature::BALLOON_FREE_PAGE_HINT,
    feature::BALLOON_PAGE_POISON,
    feature::BALLOON_REPORTING,
];

/// Virtqueue indices, as the device defines them.
const INFLATE_Q: usize = 0;
const DEFLATE_Q: usize = 1;
const STATS_Q: usize = 2;
const FREE_PAGE_Q: usize = 3;
const REPORTING_Q: usize = 4;

static BALLOON_LOCK: LockKey = LockKey::new();
static SCRATCH_LOCK: LockKey = LockKey::new();
static HINT_LOCK: LockKey = LockKey::new();
static WAKEUP_LOCK: LockKey = LockKey::new();

/// Kinds of wakeup events: the host asked for a new size, or for stats.
const WAKE_ADJUST: u32 = 1 << 0;
const WAKE_STATS: u32 = 1 << 1;

/// The driver's own counters, readable in
/// `/sys/kernel/debug/virtio_balloon_rs/virtio<N>/` (see README.md).
#[derive(Default)]
pub(crate) struct Counters {
    /// The host's latest request (`num_pages`), in 4 KiB frames.
    target_frames: AtomicU64,
    /// 4 KiB frames in the balloon (what `actual` reports).
    actual_frames: AtomicU64,
    /// Kernel pages put into the balloon, ever.
    inflated_pages: AtomicU64,
    /// Kernel pages taken out of the balloon, ever.
    deflated_pages: AtomicU64,
    /// Balloon pages moved by compaction.
    migrated_pages: AtomicU64,
    /// Migrations refused because the balloon lock was busy (compaction
    /// retries them).
    migrations_deferred: AtomicU64,
    /// Messages sent on the inflate queue.
    inflate_msgs: AtomicU64,
    /// Messages sent on the deflate queue.
    deflate_msgs: AtomicU64,
    /// Rounds cut short because no page could be allocated.
    alloc_failures: AtomicU64,
    /// Rounds held back to keep the guest's reserve available.
    reserve_holds: AtomicU64,
    /// Config-change interrupts seen.
    config_changes: AtomicU64,
    /// Buffers the host returned with a used length other than 0.
    host_odd_used_len: AtomicU64,
    /// Messages that could not be sent (broken or vanished device).
    host_errors: AtomicU64,
    /// Stats buffers sent to the host (STATS_VQ).
    stats_sent: AtomicU64,
    /// Free page reports sent to the host, and ranges in them (REPORTING).
    reports_sent: AtomicU64,
    reported_ranges: AtomicU64,
    /// OOM notifications received (DEFLATE_ON_OOM).
    oom_notifications: AtomicU64,
    /// Kernel pages given back to the guest by OOM notifications.
    oom_deflated_pages: AtomicU64,
    /// The host's latest free page hint command id (FREE_PAGE_HINT).
    hint_cmd_id: AtomicU64,
    /// Hinting runs started (one per new command id).
    hint_runs: AtomicU64,
    /// Blocks of free memory hinted to the host, ever.
    hinted_blocks: AtomicU64,
    /// Hinted blocks the driver holds now.
    hint_blocks_held: AtomicU64,
    /// Hinted blocks given back when the host said done.
    hint_blocks_done: AtomicU64,
    /// Hinted blocks given back to memory pressure by the shrinker.
    hint_blocks_shrunk: AtomicU64,
    /// Runs ended early because the host left the hint ring full.
    hint_stalls: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl debugfs::Counters for Counters {
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU64)) {
        f(c_str!("target_frames"), &self.target_frames);
        f(c_str!("actual_frames"), &self.actual_frames);
        f(c_str!("inflated_pages"), &self.inflated_pages);
        f(c_str!("deflated_pages"), &self.deflated_pages);
        f(c_str!("migrated_pages"), &self.migrated_pages);
        f(c_str!("migrations_deferred"), &self.migrations_deferred);
        f(c_str!("inflate_msgs"), &self.inflate_msgs);
        f(c_str!("deflate_msgs"), &self.deflate_msgs);
        f(c_str!("alloc_failures"), &self.alloc_failures);
        f(c_str!("reserve_holds"), &self.reserve_holds);
        f(c_str!("config_changes"), &self.config_changes);
        f(c_str!("host_odd_used_len"), &self.host_odd_used_len);
        f(c_str!("host_errors"), &self.host_errors);
        f(c_str!("stats_sent"), &self.stats_sent);
        f(c_str!("reports_sent"), &self.reports_sent);
        f(c_str!("reported_ranges"), &self.reported_ranges);
        f(c_str!("oom_notifications"), &self.oom_notifications);
        f(c_str!("oom_deflated_pages"), &self.oom_deflated_pages);
        f(c_str!("hint_cmd_id"), &self.hint_cmd_id);
        f(c_str!("hint_runs"), &self.hint_runs);
        f(c_str!("hinted_blocks"), &self.hinted_blocks);
        f(c_str!("hint_blocks_held"), &self.hint_blocks_held);
        f(c_str!("hint_blocks_done"), &self.hint_blocks_done);
        f(c_str!("hint_blocks_shrunk"), &self.hint_blocks_shrunk);
        f(c_str!("hint_stalls"), &self.hint_stalls);
    }
}

/// What the balloon lock protects.
struct State {
    /// The device's queues; `None` once frozen or being removed.
    vqs: Option<Virtqueues>,
    /// 4 KiB frames in the balloon, isolated pages included.
    held: u64,
    /// Message buffer: [`MSGS_PER_KICK`] messages of [`MSG_BYTES`].
    msg: OutBuf,
    /// Pages on their way out of the balloon.
    out: Batch<DeflatedPage>,
    /// Whether allocations are failing (logged once per episode).
    short: bool,
    /// Whether a send failure was logged already.
    send_error_logged: bool,
    /// Set when a message could not be sent: the device is broken or gave
    /// up. Nothing more is written to `msg` (the device might still read
    /// what a failed send left there) or sent, until the queues are set up
    /// again.
    dead: bool,
}

impl State {
    /// Sends the messages of `msg` whose lengths are `lens` on queue `q`
    /// and waits for the host to take them. False if some could not be
    /// sent (the device is broken or gone).
    fn tell(&mut self, dev: &Device, stats: &Counters, q: usize, lens: &[usize]) -> bool {
        if self.dead {
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
            let Some(vq) = self.vqs.as_mut().and_then(|v| v.get(q)) else {
                add(&stats.host_errors, (n - first) as u64);
                return false;
            };
            match vq.send(&self.msg, &parts[first..n]) {
                Ok(sent) => {
                    let counter = if q == INFLATE_Q {
                        &stats.inflate_msgs
                    } else {
                        &stats.deflate_msgs
                    };
                    add(counter, sent.count as u64);
                    add(&stats.host_odd_used_len, sent.odd_lengths.into());
                    first += sent.count.max(1);
                }
                Err(e) => {
                    add(&stats.host_errors, (n - first) as u64);
                    self.dead = true;
                    if !self.send_error_logged {
                        self.send_error_logged = true;
                        dev_err!(
                            dev,
                            "cannot send to the host (error {}); pages go back to the guest without it\n",
                            e.to_errno()
                        );
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Writes `actual` to the device and mirrors it in the counters.
    fn report(&self, dev: &Device, stats: &Counters) {
        // `held` never exceeds `logic::max_frames`, which fits in 32 bits.
        let actual = self.held.min(u32::MAX.into()) as u32;
        if self.vqs.is_some() {
            dev.write_config_le32(logic::config::ACTUAL, actual);
        }
        stats.actual_frames.store(self.held, Ordering::Relaxed);
    }
}

/// Everything the driver shares between its work, callbacks and page
/// migration. It is the driver data of the [`BalloonPages`].
#[pin_data]
struct Shared {
    dev: DeviceRef,
    /// 4 KiB frames per kernel page.
    fpp: u32,
    stats: Arc<Counters>,
    /// Set when an OOM notification deflated the balloon: inflation waits
    /// for the host's next target instead of taking the memory right back.
    oom_pause: AtomicBool,
    /// The balloon lock.
    #[pin]
    state: Mutex<State>,
    /// Pages allocated for the next inflation, before they are enqueued
    /// (only the update work uses it; taken before the balloon lock).
    #[pin]
    scratch: Mutex<Batch<NewPage>>,
    /// Free page hinting: the command id of the run last started.
    hint_active: AtomicU32,
    /// The host's command id as last read from the config space, and
    /// whether the config changed since (so it must be read again).
    hint_received: AtomicU32,
    hint_stale: AtomicBool,
    /// Set on remove: a run in progress ends at its next block.
    hint_quit: AtomicBool,
    /// Whether a hinting error was logged already.
    hint_error_logged: AtomicBool,
    /// Blocks hinted to the host, held until it is done with them. Never
    /// held across an allocation or the balloon lock: the shrinker takes it
    /// from memory reclaim.
    #[pin]
    hints: Mutex<HintBlocks>,
    /// Keeps the system awake while a request of the host is pending.
    #[pin]
    wakeup: WakeupEvents,
}

/// The balloon: its pages and the driver data.
type Core = BalloonPages<Shared>;

impl Migrate for Shared {
    fn migrate<'a>(pages: &'a Core, m: Migration<'a, Self>) -> Result<Migrated<'a>> {
        let sh = pages.data();
        // Never sleep on the balloon lock here: inflation holds it and may
        // itself be waiting for compaction. Compaction retries later.
        let Some(mut st) = sh.state.try_lock() else {
            add(&sh.stats.migrations_deferred, 1);
            return Err(EAGAIN);
        };
        if st.vqs.is_none() || st.dead {
            return Err(EAGAIN);
        }
        let (new, old) = (m.new_pfn(), m.old_pfn());
        if !logic::frame_fits(new, PAGE_SIZE) {
            return Err(ENOSPC);
        }
        let done = m.commit();
        let mut lens = [0usize; MSGS_PER_KICK];
        let st = &mut *st;
        logic::encode_pages(
            core::iter::once(new),
            PAGE_SIZE,
            st.msg.as_mut_slice(),
            &mut lens,
        );
        // After a failed send `msg` is not written again (`State::dead`).
        if st.tell(&sh.dev, &sh.stats, INFLATE_Q, &lens) {
            logic::encode_pages(
                core::iter::once(old),
                PAGE_SIZE,
                st.msg.as_mut_slice(),
                &mut lens,
            );
            st.tell(&sh.dev, &sh.stats, DEFLATE_Q, &lens);
        }
        add(&sh.stats.migrated_pages, 1);
        Ok(done)
    }
}

/// One round of inflation: up to `pages` kernel pages.
fn inflate(core: &Core, pages: usize) -> Next {
    let sh = core.data();
    // A host that cannot hear gets no more memory.
    if sh.state.lock().dead {
        return Next::Idle;
    }
    // Never take the guest below its reserve (see `logic::inflate_budget`).
    let (managed, available) = mm::total_and_available();
    // Without DEFLATE_ON_OOM the balloon's pages left the managed count: the
    // reserve is a share of the guest's RAM with them.
    let total = if core.accounts() {
        let held = sh.stats.actual_frames.load(Ordering::Relaxed);
        managed + logic::frames_to_pages(held, sh.fpp)
    } else {
        managed
    };
    let budget = logic::inflate_budget(available, total, PAGE_SIZE);
    let held_back = (budget as usize) < pages;
    let pages = pages.min(budget as usize);
    if pages == 0 {
        add(&sh.stats.reserve_holds, 1);
        // Holding at the reserve may last: it must not keep the system
        // from sleeping (the retries go on).
        sh.wakeup.finish();
        let mut st = sh.state.lock();
        if !st.short {
            st.short = true;
            dev_info!(
                sh.dev,
                "balloon holds at {} KiB: the guest keeps its last {} KiB available; retrying every {} ms\n",
                st.held * 4,
                available * (PAGE_SIZE as u64 / 1024),
                logic::ALLOC_RETRY_MS
            );
        }
        return Next::After(logic::ALLOC_RETRY_MS);
    }
    let mut fresh = sh.scratch.lock();
    // Allocate outside the balloon lock, as the C driver does: allocation
    // may reclaim and compact, and the OOM path needs the lock meanwhile.
    let mut failed = false;
    while fresh.len() < pages {
        match NewPage::alloc() {
            // A page above 16 TiB cannot be described to the host; it is
            // freed here and counts as a failed allocation.
            Some(p) if logic::frame_fits(p.pfn(), PAGE_SIZE) => {
                if fresh.push(p).is_err() {
                    break;
                }
            }
            _ => {
                failed = true;
                break;
            }
        }
    }
    let mut st = sh.state.lock();
    let st = &mut *st;
    // Frozen or going away; or an OOM notification freed memory while we
    // allocated: the guest needs it more than the host.
    // A send may also have failed meanwhile (`State::dead`).
    if st.vqs.is_none() || st.dead || sh.oom_pause.load(Ordering::Acquire) {
        fresh.clear();
        return Next::Idle;
    }
    let mut lens = [0usize; MSGS_PER_KICK];
    let n = logic::encode_pages(
        core::iter::from_fn(|| fresh.pop().map(|p| core.enqueue(p))),
        PAGE_SIZE,
        st.msg.as_mut_slice(),
        &mut lens,
    );
    // The buffer holds a whole round, so nothing is left; if something were,
    // it would be freed here, never leaked.
    fresh.clear();
    drop(fresh);
    st.held += n as u64 * u64::from(sh.fpp);
    add(&sh.stats.inflated_pages, n as u64);
    if !st.tell(&sh.dev, &sh.stats, INFLATE_Q, &lens) {
        // The host did not get (all of) these pages and the device is gone
        // or gave up: give the round back to the guest at once, and take
        // nothing more (see `State::dead`).
        let back = core.dequeue(n, &mut st.out);
        give_back(sh, st, back);
        return Next::Idle;
    }
    st.report(&sh.dev, &sh.stats);
    if held_back {
        // The next round decides whether anything more can be spared.
        return Next::Again;
    }
    if failed {
        add(&sh.stats.alloc_failures, 1);
        if !st.short {
            st.short = true;
            dev_info!(
                sh.dev,
                "out of memory for the balloon at {} KiB; retrying every {} ms\n",
                st.held * 4,
                logic::ALLOC_RETRY_MS
            );
        }
        return Next::After(logic::ALLOC_RETRY_MS);
    }
    Next::Again
}

/// Result of [`leak`].
enum Leak {
    /// This many kernel pages left the balloon.
    Freed(usize),
    /// Nothing to take now: what is left is isolated by compaction (it
    /// returns shortly), or the device is frozen.
    Busy,
}

/// Takes up to `pages` kernel pages out of the balloon. The host hears of
/// them before the guest gets them back, whatever the features. With
/// `for_oom`, pages freed also pause inflation (set under the balloon lock,
/// which inflation checks again before it enqueues).
fn leak(core: &Core, pages: usize, for_oom: bool) -> Leak {
    let sh = core.data();
    let mut st = sh.state.lock();
    let st = &mut *st;
    if st.vqs.is_none() {
        return Leak::Busy;
    }
    let pages = pages.min(logic::frames_to_pages(st.held, sh.fpp) as usize);
    let got = core.dequeue(pages, &mut st.out);
    if got == 0 {
        if pages != 0 && core.is_drained() {
            // Cannot happen unless the bookkeeping is wrong; do not spin.
            dev_err!(
                sh.dev,
                "balloon counts {} frames but holds no pages; resetting the count\n",
                st.held
            );
            st.held = 0;
            st.report(&sh.dev, &sh.stats);
            return Leak::Freed(0);
        }
        return Leak::Busy;
    }
    if for_oom {
        sh.oom_pause.store(true, Ordering::Release);
    }
    if !st.dead {
        let mut lens = [0usize; MSGS_PER_KICK];
        logic::encode_pages(
            st.out.as_slice().iter().map(|p| p.pfn()),
            PAGE_SIZE,
            st.msg.as_mut_slice(),
            &mut lens,
        );
        st.tell(&sh.dev, &sh.stats, DEFLATE_Q, &lens);
    }
    // Now the guest gets the pages back.
    give_back(sh, st, got);
    Leak::Freed(got)
}

/// The `got` pages just dequeued into `st.out` go back to the guest; the
/// balloon's count, the counters and the host's `actual` follow.
fn give_back(sh: &Shared, st: &mut State, got: usize) {
    st.out.clear();
    st.held -= got as u64 * u64::from(sh.fpp);
    add(&sh.stats.deflated_pages, got as u64);
    st.report(&sh.dev, &sh.stats);
}

/// One round of deflation for the update work.
fn deflate(core: &Core, pages: usize) -> Next {
    match leak(core, pages, false) {
        Leak::Freed(_) => Next::Again,
        Leak::Busy => Next::After(10),
    }
}

/// Deflates the whole balloon (remove, freeze), telling the host.
fn drain(core: &Core) {
    let round = logic::pages_per_round(core.data().fpp);
    loop {
        if core.data().state.lock().held == 0 {
            return;
        }
        if let Next::After(ms) = deflate(core, round) {
            msleep(ms);
        }
    }
}

/// Resets the device and deletes its queues. They are dropped after the
/// balloon lock is released: what they refer to (the stats work, and
/// through it the core) may go with them.
fn stop_queues(sh: &Shared) {
    let vqs = sh.state.lock().vqs.take();
    drop(vqs);
}

/// Remove and freeze: every page goes back to the guest (the host told
/// first), the host sees `actual` drop to 0, then the queues go.
fn give_back_and_stop(core: &Core, dev: &Device) {
    drain(core);
    let sh = core.data();
    sh.state.lock().report(dev, &sh.stats);
    stop_queues(sh);
}

/// The work that follows the host's target.
struct UpdateSize(Arc<Core>);

impl WorkHandler for UpdateSize {
    fn run(&self) -> Next {
        let sh = self.0.data();
        sh.wakeup.process(WAKE_ADJUST);
        let next = self.step();
        // The system may sleep once the balloon is where the host wants it
        // (or waits for something only the host can change).
        if next == Next::Idle {
            sh.wakeup.finish();
        }
        next
    }
}

impl UpdateSize {
    fn step(&self) -> Next {
        let core = &*self.0;
        let sh = core.data();
        let num_pages = sh.dev.read_config_le32(logic::config::NUM_PAGES);
        sh.stats
            .target_frames
            .store(num_pages.into(), Ordering::Relaxed);
        let target = logic::target_frames(num_pages, sh.fpp);
        let held = sh.state.lock().held;
        match logic::next_step(target, held, sh.fpp) {
            // After an OOM deflation the guest needs the memory more than
            // the host does; wait for the host to ask again.
            Step::Inflate(_) if sh.oom_pause.load(Ordering::Acquire) => Next::Idle,
            Step::Inflate(n) => inflate(core, n),
            Step::Deflate(n) => deflate(core, n),
            Step::Done => {
                let mut st = sh.state.lock();
                if st.short {
                    st.short = false;
                    dev_info!(
                        sh.dev,
                        "balloon reached the host's target of {} KiB\n",
                        held * 4
                    );
                }
                Next::Idle
            }
        }
    }
}

/// The OOM notifier's handler (DEFLATE_ON_OOM): deflates 1 MiB per call.
struct OomDeflate(Arc<Core>);

impl OomHandler for OomDeflate {
    fn out_of_memory(&self) -> u64 {
        let core = &*self.0;
        let sh = core.data();
        add(&sh.stats.oom_notifications, 1);
        // Sleeps on the balloon lock at most one host round trip: inflation
        // allocates before it takes the lock, never while holding it.
        let freed = match leak(core, logic::oom_pages(sh.fpp), true) {
            Leak::Freed(n) => n,
            Leak::Busy => 0,
        };
        add(&sh.stats.oom_deflated_pages, freed as u64);
        freed as u64
    }
}

/// Fills the stats buffer with `snap` and hands it to the host. The
/// snapshot is taken before the balloon lock: gathering it may sleep and
/// need not hold up inflation or the OOM path.
fn send_stats(sh: &Shared, st: &mut State, buf: Option<OutBuf>, snap: &MemSnapshot) {
    let Some(mut buf) = buf else {
        return;
    };
    let len = logic::encode_stats(snap, kernel::page::PAGE_SHIFT as u32, buf.as_mut_slice());
    let Some(vq) = st.vqs.as_mut().and_then(|v| v.get(STATS_Q)) else {
        return;
    };
    match vq.post(buf, len) {
        Ok(()) => add(&sh.stats.stats_sent, 1),
        Err(e) => {
            add(&sh.stats.host_errors, 1);
            dev_warn!(
                sh.dev,
                "cannot hand the stats buffer to the host: error {}\n",
                e.to_errno()
            );
        }
    }
}

/// The work that answers the host's stats requests (STATS_VQ): the host
/// returns the buffer when it wants fresh figures.
struct StatsRefresh(Arc<Core>);

impl WorkHandler for StatsRefresh {
    fn run(&self) -> Next {
        let sh = self.0.data();
        sh.wakeup.process(WAKE_STATS);
        let snap = mm::snapshot();
        let mut st = sh.state.lock();
        let st = &mut *st;
        let buf = st
            .vqs
            .as_mut()
            .and_then(|v| v.get(STATS_Q))
            .and_then(|vq| vq.take_used());
        send_stats(sh, st, buf, &snap);
        sh.wakeup.finish();
        Next::Idle
    }
}

/// Queues [`StatsRefresh`] from the stats queue's interrupt.
struct StatsKick(Arc<Work<StatsRefresh>>);

impl UsedHandler for StatsKick {
    fn used(&self) {
        self.0.handler().0.data().wakeup.start(WAKE_STATS);
        self.0.queue();
    }
}

/// Sets the device's queues up (and primes the stats queue, as C does).
fn start_queues(dev: &Device, sh: &Shared, stats: Option<&Arc<Work<StatsRefresh>>>) -> Result {
    let on_stats = match stats {
        Some(w) => {
            let kick: Arc<dyn UsedHandler> = Arc::new(StatsKick(w.clone()), GFP_KERNEL)?;
            Some(kick)
        }
        None => None,
    };
    let reporting = dev.has_feature(feature::BALLOON_REPORTING);
    let hinting = dev.has_feature(feature::BALLOON_FREE_PAGE_HINT);
    let specs = queue_specs(on_stats, hinting, reporting);
    let mut vqs = Virtqueues::find(dev, &specs).inspect_err(|e| {
        dev_err!(dev, "cannot set up virtqueues: error {}\n", e.to_errno());
    })?;
    // Smallest rings, as the C driver checks: a hinting run keeps one entry
    // for its stop id, so it needs two; the allocator reports up to
    // CAPACITY ranges at once, a descriptor each.
    let least = [
        (FREE_PAGE_Q, "free page", 2),
        (REPORTING_Q, "reporting", reporting::CAPACITY),
    ];
    for (q, what, need) in least {
        if let Some(vq) = vqs.get(q) {
            if vq.ring_size() < need {
                dev_err!(
                    dev,
                    "{} queue has {} entries, needs {}\n",
                    what,
                    vq.ring_size(),
                    need
                );
                return Err(ENOSPC);
            }
        }
    }
    let primer = match stats {
        Some(_) => Some((OutBuf::new(logic::stat::BUF_BYTES)?, mm::snapshot())),
        None => None,
    };
    let mut st = sh.state.lock();
    st.vqs = Some(vqs);
    // New queues, after a reset: the host can hear again.
    st.dead = false;
    st.send_error_logged = false;
    if let Some((buf, snap)) = primer {
        send_stats(sh, &mut st, Some(buf), &snap);
    }
    Ok(())
}

/// Free page reporting (REPORTING): hands the ranges to the host.
struct ReportFree(Arc<Core>);

impl ReportHandler for ReportFree {
    fn report(&self, ranges: &ReportedRanges<'_>) -> Result {
        let sh = self.0.data();
        let mut st = sh.state.lock();
        let Some(vq) = st.vqs.as_mut().and_then(|v| v.get(REPORTING_Q)) else {
            // Frozen: the allocator keeps the pages and tries again later.
            return Err(EBUSY);
        };
        vq.send_reported(ranges)
            .inspect_err(|_| add(&sh.stats.host_errors, 1))?;
        add(&sh.stats.reports_sent, 1);
        add(&sh.stats.reported_ranges, ranges.len().into());
        Ok(())
    }
}

/// The host's free page hint command id, read again from the config space
/// only if it changed since the last read (a read is a trap to the host).
fn hint_cmd_id(sh: &Shared) -> u32 {
    if sh.hint_stale.swap(false, Ordering::AcqRel) {
        let id = sh
            .dev
            .read_config_le32(logic::config::FREE_PAGE_HINT_CMD_ID);
        sh.hint_received.store(id, Ordering::Release);
        sh.stats.hint_cmd_id.store(id.into(), Ordering::Relaxed);
    }
    sh.hint_received.load(Ordering::Acquire)
}

/// Runs `f` on the free page queue, under the balloon lock. `ENODEV` when
/// the queues are gone (frozen or being removed).
fn with_hint_queue<T>(sh: &Shared, f: impl FnOnce(&mut Virtqueue) -> Result<T>) -> Result<T> {
    let mut st = sh.state.lock();
    let vq = st
        .vqs
        .as_mut()
        .and_then(|v| v.get(FREE_PAGE_Q))
        .ok_or(ENODEV)?;
    // The host returns hinted blocks and command ids as it goes; nothing
    // waits for them, so detach them before adding more.
    vq.reap();
    f(vq)
}

/// Gives up to `blocks` held hint blocks back to the guest; returns how many.
fn return_hints(sh: &Shared, blocks: usize) -> usize {
    release_hints(sh, &mut sh.hints.lock(), blocks)
}

fn release_hints(sh: &Shared, held: &mut HintBlocks, blocks: usize) -> usize {
    let n = held.release(blocks);
    note_held(sh, held);
    n
}

/// Mirrors the number of held hint blocks in `hint_blocks_held` (which the
/// shrinker's count reads without the lock).
fn note_held(sh: &Shared, held: &HintBlocks) {
    sh.stats
        .hint_blocks_held
        .store(held.len() as u64, Ordering::Relaxed);
}

fn hint_error(sh: &Shared, what: &str, e: Error) {
    add(&sh.stats.host_errors, 1);
    if !sh.hint_error_logged.swap(true, Ordering::AcqRel) {
        dev_warn!(
            sh.dev,
            "free page hinting: cannot send {} to the host (error {}); further errors are only counted\n",
            what,
            e.to_errno()
        );
    }
}

/// One hinting run for command id `id`: echo the id, hand the host free
/// blocks until none is left or the host changes the id, then send stop.
/// The blocks stay held until the host says done (or the shrinker or
/// removal takes them back).
fn hint_run(sh: &Shared, id: u32) {
    sh.hint_active.store(id, Ordering::Release);
    add(&sh.stats.hint_runs, 1);
    if let Err(e) = with_hint_queue(sh, |vq| vq.hint_cmd(HintCmd::Start, id)) {
        hint_error(sh, "a start id", e);
        return;
    }
    let mut pending: Option<HintBlock> = None;
    let mut stalled_ms = 0u32;
    loop {
        if sh.hint_quit.load(Ordering::Acquire) || !hint::keep_going(id, hint_cmd_id(sh)) {
            break;
        }
        let block = match pending.take().or_else(HintBlock::alloc) {
            Some(b) => b,
            // No free block left: everything free is hinted. This is how a
            // run normally ends, so it is not reported.
            None => break,
        };
        match with_hint_queue(sh, |vq| vq.hint_block(&block)) {
            Ok(true) => {
                let mut held = sh.hints.lock();
                held.push(block);
                note_held(sh, &held);
                drop(held);
                add(&sh.stats.hinted_blocks, 1);
                stalled_ms = 0;
            }
            Ok(false) => {
                // The ring is full: the host has not caught up yet.
                if stalled_ms >= hint::STALL_MS {
                    add(&sh.stats.hint_stalls, 1);
                    dev_warn!(
                        sh.dev,
                        "free page hinting: the host took no hint for {} ms; ending run {}\n",
                        stalled_ms,
                        id
                    );
                    break;
                }
                pending = Some(block);
                msleep(hint::STALL_POLL_MS);
                stalled_ms += hint::STALL_POLL_MS;
            }
            Err(e) => {
                hint_error(sh, "a free block", e);
                break;
            }
        }
        cond_resched();
    }
    drop(pending);
    if let Err(e) = with_hint_queue(sh, |vq| vq.hint_cmd(HintCmd::Stop, hint::CMD_ID_STOP)) {
        hint_error(sh, "a stop id", e);
    }
}

/// The free page hint work (FREE_PAGE_HINT), on its own freezable,
/// CPU-intensive workqueue: a run may take all of the guest's free memory.
struct FreePageHint(Arc<Core>);

impl WorkHandler for FreePageHint {
    fn run(&self) -> Next {
        let sh = self.0.data();
        let received = hint_cmd_id(sh);
        match hint::action(received, sh.hint_active.load(Ordering::Acquire)) {
            hint::Action::ReturnAll => {
                let n = return_hints(sh, usize::MAX);
                add(&sh.stats.hint_blocks_done, n as u64);
            }
            hint::Action::Start(id) => hint_run(sh, id),
            hint::Action::Nothing => {}
        }
        Next::Idle
    }
}

/// The shrinker of FREE_PAGE_HINT: under memory pressure, held hint blocks
/// go back to the guest before the host is done with them (allowed: the
/// host must keep whatever the guest writes to a hinted page later).
struct HintShrink(Arc<Core>);

impl ShrinkHandler for HintShrink {
    fn count(&self) -> u64 {
        let held = self.0.data().stats.hint_blocks_held.load(Ordering::Relaxed);
        held.saturating_mul(hint::block_pages(hintmem::ORDER))
    }

    fn scan(&self, nr_to_scan: u64) -> u64 {
        let sh = self.0.data();
        let want = hint::blocks_for(nr_to_scan, hintmem::ORDER);
        // Reclaim never waits here: a busy list (a run adding a block, DONE
        // giving all back) is left for the next pass.
        let Some(mut held) = sh.hints.try_lock() else {
            return 0;
        };
        let n = release_hints(sh, &mut held, usize::try_from(want).unwrap_or(usize::MAX));
        add(&sh.stats.hint_blocks_shrunk, n as u64);
        (n as u64).saturating_mul(hint::block_pages(hintmem::ORDER))
    }
}

/// Per-device driver data.
pub(crate) struct Balloon {
    /// Registered when REPORTING is negotiated; unregistered first.
    reporting: Option<Pin<KBox<PageReporting<ReportFree>>>>,
    /// Answers the host's stats requests (STATS_VQ).
    stats: Option<Arc<Work<StatsRefresh>>>,
    /// Registered when DEFLATE_ON_OOM is negotiated; dropped first.
    oom: Option<Pin<KBox<OomNotifier<OomDeflate>>>>,
    /// Free page hinting (FREE_PAGE_HINT): its shrinker and its work.
    hint_shrinker: Option<Shrinker<HintShrink>>,
    hint: Option<Work<FreePageHint>>,
    core: Arc<Core>,
    update: Work<UpdateSize>,
    _debugfs: CounterDir<Counters>,
}

fn queue_specs(
    on_stats: Option<Arc<dyn UsedHandler>>,
    hinting: bool,
    reporting: bool,
) -> [QueueSpec; 5] {
    [
        QueueSpec {
            name: c_str!("inflate"),
            on_used: None,
            used: true,
            interrupts: true,
        },
        QueueSpec {
            name: c_str!("deflate"),
            on_used: None,
            used: true,
            interrupts: true,
        },
        QueueSpec {
            name: c_str!("stats"),
            used: on_stats.is_some(),
            on_used: on_stats,
            interrupts: true,
        },
        // Polled, as in the C driver: nothing waits on it.
        QueueSpec {
            name: c_str!("free_page_vq"),
            used: hinting,
            on_used: None,
            interrupts: false,
        },
        QueueSpec {
            name: c_str!("reporting_vq"),
            used: reporting,
            on_used: None,
            interrupts: true,
        },
    ]
}

impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const DEVICE_ID: u32 = id::BALLOON;
    const FEATURES: &'static [u32] = &FEATURES;

    fn validate(dev: &Device) -> Result {
        // PAGE_POISON only when freed pages have a known content (poisoned
        // or zeroed) to tell the host about; without it, free page
        // reporting could change what a freed page holds, so it goes too.
        if !mm::want_init_on_free() && !mm::page_poisoning_enabled() {
            dev.clear_feature(feature::BALLOON_PAGE_POISON);
        } else if !dev.has_feature(feature::BALLOON_PAGE_POISON) {
            dev.clear_feature(feature::BALLOON_REPORTING);
        }
        // As the C driver: no indirect descriptors (page reporting must not
        // allocate in virtqueue_add) and no IOMMU platform access.
        dev.clear_feature(feature::RING_INDIRECT_DESC);
        dev.clear_feature(feature::ACCESS_PLATFORM);
        Ok(())
    }

    fn probe(dev: &Device) -> Result<KBox<Self>> {
        let Some(fpp) = logic::frames_per_page(PAGE_SIZE) else {
            dev_err!(dev, "page size {} is not a multiple of 4 KiB\n", PAGE_SIZE);
            return Err(EINVAL);
        };
        // Without DEFLATE_ON_OOM the balloon's pages leave MemTotal.
        let account = !dev.has_feature(feature::BALLOON_DEFLATE_ON_OOM);
        let round = logic::pages_per_round(fpp);
        let msg = OutBuf::new(MSGS_PER_KICK * MSG_BYTES)?;
        let out = Batch::with_capacity(round)?;
        let scratch = Batch::with_capacity(round)?;
        let hints = HintBlocks::new()?;
        let stats = Arc::new(Counters::default(), GFP_KERNEL)?;
        let name = CString::try_from_fmt(fmt!("virtio{}", dev.index()))?;
        let state = State {
            vqs: None,
            held: 0,
            msg,
            out,
            short: false,
            send_error_logged: false,
            dead: false,
        };
        let core = Arc::pin_init(
            BalloonPages::new(
                account,
                try_pin_init!(Shared {
                    dev: dev.get_ref(),
                    fpp,
                    stats,
                    oom_pause: AtomicBool::new(false),
                    state <- Mutex::new(state, c_str!("virtio_balloon_rs::balloon_lock"), &BALLOON_LOCK),
                    scratch <- Mutex::new(scratch, c_str!("virtio_balloon_rs::scratch"), &SCRATCH_LOCK),
                    hint_active: AtomicU32::new(hint::CMD_ID_STOP),
                    hint_received: AtomicU32::new(hint::CMD_ID_STOP),
                    // Read at once: a run may be under way as the driver binds.
                    hint_stale: AtomicBool::new(true),
                    hint_quit: AtomicBool::new(false),
                    hint_error_logged: AtomicBool::new(false),
                    hints <- Mutex::new(hints, c_str!("virtio_balloon_rs::hints"), &HINT_LOCK),
                    wakeup <- WakeupEvents::new(dev.get_ref(), c_str!("virtio_balloon_rs::wakeup"), &WAKEUP_LOCK),
                }? Error),
            ),
            GFP_KERNEL,
        )?;
        let update = Work::new(Queue::system_freezable(), UpdateSize(core.clone()))?;
        let stats = if dev.has_feature(feature::BALLOON_STATS_VQ) {
            let work = Work::new(Queue::system_freezable(), StatsRefresh(core.clone()))?;
            Some(Arc::new(work, GFP_KERNEL)?)
        } else {
            None
        };
        let hint = if dev.has_feature(feature::BALLOON_FREE_PAGE_HINT) {
            let queue = Queue::new_freezable_cpu_intensive(c_str!("virtio_balloon_rs_hint"))?;
            Some(Work::new(queue, FreePageHint(core.clone()))?)
        } else {
            None
        };
        // The queues last: their interrupts need the works above. The
        // device is not live until probe returns.
        start_queues(dev, core.data(), stats.as_ref())?;
        if dev.has_feature(feature::BALLOON_PAGE_POISON) {
            let val = logic::poison_val(mm::want_init_on_free(), mm::PAGE_POISON);
            dev.write_config_le32(logic::config::POISON_VAL, val);
        }
        // From here on the queues refer to the works, which refer to the
        // core: on failure, drop the queues (resetting the device) to break
        // that cycle, or nothing would be freed.
        let oom = if account {
            None
        } else {
            match OomNotifier::register(OomDeflate(core.clone()), logic::OOM_NOTIFY_PRIORITY) {
                Ok(nb) => Some(nb),
                Err(e) => {
                    dev_err!(
                        dev,
                        "cannot register the OOM notifier: error {}\n",
                        e.to_errno()
                    );
                    stop_queues(core.data());
                    return Err(e);
                }
            }
        };
        let reporting = if dev.has_feature(feature::BALLOON_REPORTING) {
            match PageReporting::register(ReportFree(core.clone()), None) {
                Ok(r) => Some(r),
                Err(e) => {
                    dev_err!(
                        dev,
                        "cannot register free page reporting: error {}\n",
                        e.to_errno()
                    );
                    drop(oom);
                    stop_queues(core.data());
                    return Err(e);
                }
            }
        } else {
            None
        };
        // Hinted blocks may go back under memory pressure at any time.
        let hint_shrinker = if hint.is_some() {
            match Shrinker::register(c_str!("virtio_balloon_rs"), HintShrink(core.clone())) {
                Ok(s) => Some(s),
                Err(e) => {
                    dev_err!(
                        dev,
                        "cannot register the free page hint shrinker: error {}\n",
                        e.to_errno()
                    );
                    drop(reporting);
                    drop(oom);
                    stop_queues(core.data());
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut debugfs = CounterDir::new(&name, core.data().stats.clone());
        if let Some(faults) = dev.host_faults() {
            debugfs.add_knobs(faults);
        }
        let this = Self {
            reporting,
            stats,
            oom,
            hint_shrinker,
            hint,
            core: core.clone(),
            update,
            _debugfs: debugfs,
        };
        KBox::new(this, GFP_KERNEL).map_err(|e| {
            stop_queues(core.data());
            e.into()
        })
    }

    fn ready(&self, dev: &Device) {
        dev_info!(
            dev,
            "virtio_balloon_rs bound to virtio{}: features {} ({:#x}), {} KiB pages\n",
            dev.index(),
            FeatureList(dev.features()),
            dev.features(),
            PAGE_SIZE / 1024
        );
        // A target set before the driver came is followed at once.
        self.core.data().wakeup.start(WAKE_ADJUST);
        self.update.queue();
        if let Some(hint) = &self.hint {
            hint.queue();
        }
    }

    fn config_changed(&self, _dev: &Device) {
        let sh = self.core.data();
        add(&sh.stats.config_changes, 1);
        // A new target from the host lifts a pause after OOM deflation.
        sh.oom_pause.store(false, Ordering::Release);
        sh.wakeup.start(WAKE_ADJUST);
        self.update.queue();
        if let Some(hint) = &self.hint {
            sh.hint_stale.store(true, Ordering::Release);
            hint.queue();
        }
    }

    fn remove(&self, dev: &Device) {
        // No report may reach the host once the queues are going.
        if let Some(r) = &self.reporting {
            r.unregister();
        }
        // No OOM notification may see a half-torn-down balloon: off the
        // chain first (waits for one in progress).
        if let Some(oom) = &self.oom {
            oom.unregister();
        }
        if let Some(s) = &self.hint_shrinker {
            s.unregister();
        }
        let sh = self.core.data();
        // A hinting run in progress ends at its next block.
        sh.hint_quit.store(true, Ordering::Release);
        // No work runs after this, and config changes no longer queue any.
        self.update.stop();
        if let Some(stats) = &self.stats {
            stats.stop();
        }
        if let Some(hint) = &self.hint {
            hint.stop();
        }
        // With the shrinker gone, nothing else could give hinted memory
        // back while the balloon drains: do it first.
        let blocks = return_hints(sh, usize::MAX);
        // No work will finish what is pending: let the system sleep.
        sh.wakeup.clear();
        let pages = logic::frames_to_pages(sh.state.lock().held, sh.fpp);
        // Every page goes back to the guest, and the device is reset before
        // the data goes.
        give_back_and_stop(&self.core, dev);
        if blocks != 0 {
            dev_info!(dev, "{} free page hint blocks given back\n", blocks);
        }
        dev_info!(
            dev,
            "virtio_balloon_rs unbound from virtio{}; {} pages given back\n",
            dev.index(),
            pages
        );
    }

    fn freeze(&self, dev: &Device) -> Result {
        // The freezable works are frozen already. Give every page back, then
        // let go of the queues (restore sets them up again), then the
        // hinted blocks: the image need not hold them.
        give_back_and_stop(&self.core, dev);
        return_hints(self.core.data(), usize::MAX);
        Ok(())
    }

    fn restore(&self, dev: &Device) -> Result {
        let sh = self.core.data();
        start_queues(dev, sh, self.stats.as_ref())?;
        // Freeze gave every page back: follow the host's target again, as
        // the C driver does, even after an OOM deflation.
        sh.oom_pause.store(false, Ordering::Release);
        dev.ready();
        sh.state.lock().report(dev, &sh.stats);
        sh.wakeup.start(WAKE_ADJUST);
        self.update.queue();
        // A hinting request may have come while the system slept.
        if let Some(hint) = &self.hint {
            sh.hint_stale.store(true, Ordering::Release);
            hint.queue();
        }
        Ok(())
    }
}
