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

counters! {
    /// The driver's own counters, readable in
    /// `/sys/kernel/debug/virtio_balloon_rs/virtio<N>/` (see README.md).
    pub(crate) struct Counters {
        /// The host's latest request (`num_pages`), in 4 KiB frames.
        target_frames,
        /// 4 KiB frames in the balloon (what `actual` reports).
        actual_frames,
        /// Kernel pages put into the balloon, ever.
        inflated_pages,
        /// Kernel pages taken out of the balloon, ever.
        deflated_pages,
        /// Balloon pages moved by compaction.
        migrated_pages,
        /// Migrations refused because the balloon lock was busy (compaction
        /// retries them).
        migrations_deferred,
        /// Messages sent on the inflate queue.
        inflate_msgs,
        /// Messages sent on the deflate queue.
        deflate_msgs,
        /// Rounds cut short because no page could be allocated.
        alloc_failures,
        /// Kernel pages an inflation round took from those allocated for
        /// it ahead, on another CPU while the round before was handed to
        /// the host.
        pages_allocated_ahead,
        /// Rounds held back to keep the guest's reserve available.
        reserve_holds,
        /// Config-change interrupts seen.
        config_changes,
        /// Buffers the host returned with a used length other than 0.
        host_odd_used_len,
        /// Messages that could not be sent (broken or vanished device).
        host_errors,
        /// Stats buffers sent to the host (STATS_VQ).
        stats_sent,
        /// Free page reports sent to the host (REPORTING).
        reports_sent,
        /// Page ranges in those reports.
        reported_ranges,
        /// OOM notifications received (DEFLATE_ON_OOM).
        oom_notifications,
        /// Bursts of OOM notifications: the first after a quiet period
        /// deflates 1 MiB again.
        oom_bursts,
        /// Kernel pages given back to the guest by OOM notifications.
        oom_deflated_pages,
        /// The host's latest free page hint command id (FREE_PAGE_HINT).
        hint_cmd_id,
        /// Hinting runs started (one per new command id).
        hint_runs,
        /// Blocks of free memory hinted to the host, ever.
        hinted_blocks,
        /// Hinted blocks the driver holds now (returned by the host).
        hint_blocks_held,
        /// Hinted blocks freed when the host said done.
        hint_blocks_done,
        /// Hinted blocks freed to memory pressure by the shrinker.
        hint_blocks_shrunk,
        /// Runs ended early because the host left the hint ring full.
        hint_stalls,
    }
}

/// The driver's fault knobs, in its debugfs directory on kernels built for
/// fault injection (the debug kernel), beside the virtio layer's own.
#[derive(Default)]
struct Knobs {
    /// While non-zero, the next free page hint command id goes out 2 bytes
    /// long instead of 4 (one per count), which QEMU answers by declaring
    /// its device broken.
    short_hint_cmd: AtomicU32,
}

#[cfg(CONFIG_FAULT_INJECTION_DEBUG_FS)]
impl crate::kapi::debugfs::Knobs for Knobs {
    fn each(&self, f: &mut dyn FnMut(&'static CStr, &AtomicU32)) {
        f(c_str!("inject_short_hint_cmd"), &self.short_hint_cmd);
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Messages the driver says once and then only counts: the first
/// occurrence logs; [`Notes::clear`] re-arms one (a new episode).
struct Notes(AtomicU32);

#[derive(Clone, Copy)]
#[repr(u32)]
enum Note {
    /// Inflation is held back (no memory, or the guest's reserve).
    Short = 1 << 0,
    /// A message could not be sent to the host.
    SendError = 1 << 1,
    /// A free page hint could not be sent.
    HintError = 1 << 2,
}

impl Notes {
    /// Whether this is the first `n` since it was last cleared.
    fn first(&self, n: Note) -> bool {
        self.0.fetch_or(n as u32, Ordering::AcqRel) & n as u32 == 0
    }

    /// Re-arms `n`; returns whether it was set.
    fn clear(&self, n: Note) -> bool {
        self.0.fetch_and(!(n as u32), Ordering::AcqRel) & n as u32 != 0
    }
}

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

/// Deflated pages on their way back to the guest.
#[pin_data]
struct Freeing {
    /// The pages: a round is swapped in whole under the balloon lock, and
    /// taken out a chunk at a time ([`free_chunk`]) under the balloon lock
    /// or by the free work (holding `busy`). Innermost: no other lock is
    /// taken while it is held, and no page is freed.
    #[pin]
    pages: Mutex<Batch<DeflatedPage>>,
    /// The free work's chunk, held while it frees: once this lock can be
    /// taken, every page the work took is back.
    #[pin]
    busy: Mutex<Batch<DeflatedPage>>,
}

/// Kernel pages a CPU takes from [`Freeing`] at a time.
const FREE_CHUNK: usize = 64;

/// Moves up to a chunk's room of pages from `pages` into `chunk` (empty)
/// and frees them outside the lock of `pages`, so that the other CPU can
/// take the next chunk meanwhile. False if none was left. The chunk is
/// preallocated: this runs in the OOM notifier too, deep in an allocation.
fn free_chunk(pages: &Mutex<Batch<DeflatedPage>>, chunk: &mut Batch<DeflatedPage>) -> bool {
    chunk.fill_from(&mut pages.lock());
    let any = chunk.len() != 0;
    // Dropping a page frees it.
    chunk.clear();
    any
}

/// Deflated pages (the host told) and the work that gives them back to the
/// guest on whichever CPU is idle (the system unbound queue). The next
/// round, once its host is told, frees what is left beside the work. What
/// is left in the batch at teardown is freed when its last reference goes
/// (after the work has stopped).
struct Freer {
    batch: Arc<Freeing>,
    work: Work<FreeDeflated>,
}

/// The work that gives deflated pages back to the guest: dropping a page
/// frees it. It owns only the batch, so the driver data can own the work.
struct FreeDeflated(Arc<Freeing>);

impl WorkHandler for FreeDeflated {
    fn run(&self, _me: &Running<'_>) -> Next {
        let mut chunk = self.0.busy.lock();
        while free_chunk(&self.0.pages, &mut chunk) {}
        Next::Idle
    }
}

/// Pages allocated for the next inflation round by [`FillAhead`], on
/// another CPU while this one hands the current round to the host, and
/// how many more it should allocate.
#[pin_data]
struct Ahead {
    /// Kernel pages the fill work is to allocate when it runs next.
    want: AtomicUsize,
    /// What it allocated. Its lock is taken by the update work (with at
    /// most `scratch` held, never the balloon lock), by `stop_queues` and
    /// `drain` (holding nothing), by the fill work while it allocates
    /// (reclaim may then only try other locks), or tried by the OOM path.
    #[pin]
    pages: Mutex<Batch<NewPage>>,
}

/// Ahead-allocated pages and the work that allocates them, on the system
/// unbound queue (so on whichever CPU is idle, not the one busy with the
/// host). What is left at teardown is freed when the last reference goes
/// (after the work has stopped).
struct Filler {
    ahead: Arc<Ahead>,
    work: Work<FillAhead>,
}

/// The work that allocates the next inflation round. It owns only the
/// batch, so the driver data can own the work.
struct FillAhead(Arc<Ahead>);

impl WorkHandler for FillAhead {
    fn run(&self, _me: &Running<'_>) -> Next {
        let mut pages = self.0.pages.lock();
        // Read under the lock: whoever cleared the batch set it to 0
        // first, so nothing is allocated for a round that will not come.
        let want = self.0.want.swap(0, Ordering::AcqRel);
        // Short of memory, the round itself tries again (and counts the
        // failure). Pages the host cannot be told of are checked here
        // rather than on the CPU busy with the host; the round allocates
        // in place of any freed.
        top_up(&mut pages, want);
        Next::Idle
    }
}

impl Filler {
    /// Asks for `pages` kernel pages to be allocated on another CPU (0:
    /// none).
    fn request(&self, pages: usize) {
        self.ahead.want.store(pages, Ordering::Release);
        if pages != 0 {
            self.work.queue();
        }
    }

    /// Moves what was allocated ahead into `into` (empty), waiting for an
    /// allocation running, and cancels what was asked for.
    fn take(&self, into: &mut Batch<NewPage>) {
        self.ahead.want.store(0, Ordering::Release);
        let mut pages = self.ahead.pages.lock();
        core::mem::swap(&mut *pages, into);
    }

    /// Gives back what was allocated ahead (waiting for an allocation
    /// running), and cancels what was asked for.
    fn clear(&self) {
        self.ahead.want.store(0, Ordering::Release);
        self.ahead.pages.lock().clear();
    }

    /// [`Filler::clear`] for the OOM path, which must not wait for an
    /// allocation: returns how many pages went back (none if the fill work
    /// is allocating; it allocates no more than it was asked, and the
    /// round that takes them frees them during an OOM pause).
    fn try_clear(&self) -> usize {
        self.ahead.want.store(0, Ordering::Release);
        match self.ahead.pages.try_lock() {
            Some(mut pages) => {
                let n = pages.len();
                pages.clear();
                n
            }
            None => 0,
        }
    }
}

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
    /// host told, go back to the guest; the balloon's count, the counters
    /// and `actual` follow. With `later`, the free work gives them back on
    /// another CPU while this one goes on with the next round (what it has
    /// not freed of the last batch by then, this CPU frees beside it);
    /// otherwise they are back, with every page the free work had, before
    /// the host sees the new size.
    fn free_deflated(&self, st: &mut State, got: usize, later: bool) {
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
        self.publish(st);
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

impl Migrate for Shared {
    fn migrate<'a>(pages: &'a BalloonCore, m: Migration<'a, Self>) -> Result<Migrated<'a>> {
        let sh = pages.data();
        // Never sleep on the balloon lock here: inflation holds it and may
        // itself be waiting for compaction. Compaction retries later.
        let Some(mut st) = sh.state.try_lock() else {
            add(&sh.stats.migrations_deferred, 1);
            return Err(EAGAIN);
        };
        let st = &mut *st;
        let (new, old) = (m.new_pfn(), m.old_pfn());
        if !logic::frame_fits(new, PAGE_SIZE) {
            return Err(ENOSPC);
        }
        // The host must hear of the new page after any inflation in flight,
        // and waiting for that here would hold up compaction with both
        // pages locked: it retries once the round is collected.
        if st.inflating != 0 {
            add(&sh.stats.migrations_deferred, 1);
            return Err(EAGAIN);
        }
        let Some(q) = st.queues.as_mut() else {
            return Err(EAGAIN);
        };
        if sh.host_gone.load(Ordering::Acquire) {
            return Err(EAGAIN);
        }
        let Some(mut msg) = q.inflate_spare.pop() else {
            return Err(EAGAIN);
        };
        let done = m.commit();
        let mut lens = [0usize; 1];
        logic::encode_pages(
            core::iter::once(new),
            PAGE_SIZE,
            msg.buf.as_mut_slice(),
            &mut lens,
        );
        msg.buf.set_len(lens[0]);
        if sh.tell_inflate(q, msg) {
            let mut lens = [0usize; MSGS_PER_KICK];
            logic::encode_pages(
                core::iter::once(old),
                PAGE_SIZE,
                st.msg.as_mut_slice(),
                &mut lens,
            );
            sh.tell(&mut q.deflate, &st.msg, &lens, &sh.stats.deflate_msgs);
        }
        add(&sh.stats.migrated_pages, 1);
        Ok(done)
    }
}

/// Kernel pages inflation may take now without going below the guest's
/// reserve (see `logic::inflate_budget`), counting `spare` pages the
/// driver holds for inflation as available (they are the guest's again if
/// the round does not take them).
fn inflate_budget(core: &BalloonCore, spare: u64) -> u64 {
    let sh = core.data();
    let available = mm::available_pages().saturating_add(spare);
    let managed = mm::meminfo().total;
    // Without DEFLATE_ON_OOM the balloon's pages left the managed count: the
    // reserve is a share of the guest's RAM with them.
    let total = if core.accounts() {
        let held = sh.stats.actual_frames.load(Ordering::Relaxed);
        managed + logic::frames_to_pages(held, sh.fpp)
    } else {
        managed
    };
    logic::inflate_budget(available, total, PAGE_SIZE)
}

/// Allocates pages into `pages` until it holds `want`: in bulk, from the
/// per-CPU lists while memory is plentiful, a page at a time through the
/// slow path when it is not. Of the new pages, those the host cannot be
/// told of (a 4 KiB frame number above 32 bits, past 16 TiB) are freed
/// again. Returns whether it fell short (memory, room, or such a page).
fn top_up(pages: &mut Batch<NewPage>, want: usize) -> bool {
    let had = pages.len();
    let mut short = false;
    while pages.len() < want {
        if pages.room() == 0 || pages.alloc_bulk(want - pages.len()) == 0 {
            short = true;
            break;
        }
    }
    let allocated = pages.len();
    pages.retain_from(had, |p| logic::frame_fits(p.pfn(), PAGE_SIZE));
    short || pages.len() < allocated
}

/// Collects the inflate messages on the ring: the pages of each one the
/// host took enter the balloon, and `held` and `actual` follow. If the host
/// is lost meanwhile, the device was reset and the pages of the messages it
/// had went back to the guest with them. Afterwards nothing is in flight.
fn settle(core: &BalloonCore, st: &mut State) {
    let sh = core.data();
    let Some(q) = st.queues.as_mut() else {
        st.inflating = 0;
        return;
    };
    let mut got = 0usize;
    while q.inflate.in_flight() != 0 {
        let left = q.inflate.in_flight();
        match q.inflate.wait() {
            Ok((mut msg, len)) => {
                got += msg.with.len();
                core.enqueue_all(&mut msg.with);
                sh.returned(q, msg, len);
            }
            Err(e) => {
                sh.lost_host(e, left);
                break;
            }
        }
    }
    st.inflating = 0;
    if got != 0 {
        st.held += got as u64 * u64::from(sh.fpp);
        add(&sh.stats.inflated_pages, got as u64);
        sh.publish(st);
    }
}

/// Hands the pages of `fresh` to the host, a message at a time (at most
/// [`MSGS_PER_KICK`], one kick), without waiting: each message owns its
/// pages until the host returns it ([`settle`]). Returns how many pages
/// went; those left in `fresh` did not (no message or ring room left).
fn post_inflate(sh: &Shared, q: &mut Queues, fresh: &mut Batch<NewPage>) -> usize {
    let mut pages = 0usize;
    let mut msgs = 0u64;
    while fresh.len() != 0 {
        let Some(mut msg) = q.inflate_spare.pop() else {
            break;
        };
        msg.with.fill_from(fresh);
        let mut lens = [0usize; 1];
        let m = &mut *msg;
        let n = logic::encode_pages(
            m.with.as_slice().iter().map(|p| p.pfn()),
            PAGE_SIZE,
            m.buf.as_mut_slice(),
            &mut lens,
        );
        // A message has room for the frames of as many pages as its batch
        // holds, so every page was encoded; one that was not is freed here,
        // never described to the host.
        while msg.with.len() > n {
            drop(msg.with.pop());
        }
        msg.buf.set_len(lens[0]);
        match q.inflate.add(msg) {
            Ok(()) => {
                pages += n;
                msgs += 1;
            }
            Err((mut msg, _)) => {
                // Not on the ring (it is full, or gone): its pages go back.
                msg.with.clear();
                let _ = q.inflate_spare.push(msg);
                break;
            }
        }
    }
    if msgs != 0 {
        q.inflate.kick();
        add(&sh.stats.inflate_msgs, msgs);
    }
    pages
}

/// One round of inflation: up to `pages` kernel pages. Most were allocated
/// ahead, on another CPU while this one handed the last round to the host
/// (which, on hosts that answer from another thread, takes it meanwhile);
/// they are handed to the host, and collected by the next round or by
/// whatever needs the balloon lock next ([`settle`]). Then `next` pages are
/// asked of the fill work for the round after (0: none follows).
fn inflate(core: &BalloonCore, pages: usize, next: usize) -> Next {
    let sh = core.data();
    let mut fresh = sh.scratch.lock();
    // Round start: `fresh` is empty (every exit below empties it).
    sh.filler.take(&mut fresh);
    let ahead = fresh.len();
    // A host that cannot hear gets no more memory. The pages allocated
    // ahead count as available: what the round does not take goes back.
    let budget = if sh.host_gone.load(Ordering::Acquire) {
        0
    } else {
        inflate_budget(core, ahead as u64)
    };
    let held_back = budget < pages as u64;
    let pages = pages.min(budget as usize);
    while fresh.len() > pages {
        drop(fresh.pop());
    }
    // Allocate outside the balloon lock, as the C driver does: allocation
    // may reclaim and compact, and the OOM path needs the lock meanwhile.
    // A page the host cannot be told of counts as a failed allocation.
    let failed = top_up(&mut fresh, pages);
    add(
        &sh.stats.pages_allocated_ahead,
        ahead.min(fresh.len()) as u64,
    );
    // The round after is allocated on another CPU while this one is handed
    // to the host, within what the guest can spare once this one is gone.
    // Not after a failure (the retry waits) or a hold (the next round
    // decides again).
    if !failed && !held_back && pages != 0 && !sh.oom_pause.load(Ordering::Acquire) {
        let budget = inflate_budget(core, 0).min(usize::MAX as u64) as usize;
        sh.filler.request(next.min(budget));
    }
    let mut guard = sh.state.lock();
    let st = &mut *guard;
    // The last round's messages, which the host had while we allocated.
    settle(core, st);
    // Frozen or going away, a host that stopped hearing, or an OOM
    // notification that freed memory while we allocated (the guest needs
    // it more than the host): the pages go back at once, and those of the
    // round after once the balloon lock is free again (the OOM path may
    // be waiting for it).
    let Some(q) = st.queues.as_mut() else {
        fresh.clear();
        drop(guard);
        sh.filler.clear();
        return Next::Idle;
    };
    if sh.host_gone.load(Ordering::Acquire) || sh.oom_pause.load(Ordering::Acquire) {
        fresh.clear();
        drop(guard);
        sh.filler.clear();
        return Next::Idle;
    }
    if pages == 0 {
        add(&sh.stats.reserve_holds, 1);
        // Holding at the reserve may last: it must not keep the system
        // from sleeping (the retries go on).
        sh.wakeup.finish();
        if sh.notes.first(Note::Short) {
            dev_info!(
                sh.dev,
                "balloon holds at {} KiB: the guest keeps its last {} KiB available; retrying every {} ms\n",
                st.held * 4,
                mm::available_pages() * (PAGE_SIZE as u64 / 1024),
                logic::ALLOC_RETRY_MS
            );
        }
        return Next::After(logic::ALLOC_RETRY_MS);
    }
    let sent = post_inflate(sh, q, &mut fresh);
    // Whatever could not be handed over goes back to the guest now.
    fresh.clear();
    drop(fresh);
    st.inflating += sent as u64 * u64::from(sh.fpp);
    if held_back {
        // The next round decides whether anything more can be spared.
        sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
        return Next::Again;
    }
    if failed {
        add(&sh.stats.alloc_failures, 1);
        let failures = sh.alloc_failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if sh.notes.first(Note::Short) {
            dev_info!(
                sh.dev,
                "out of memory for the balloon at {} KiB; retrying in {} to {} ms\n",
                (st.held + st.inflating) * 4,
                logic::ALLOC_RETRY_FIRST_MS,
                logic::ALLOC_RETRY_MS
            );
        }
        // Nothing stays in flight through the wait.
        settle(core, st);
        return Next::After(logic::alloc_retry_ms(failures));
    }
    sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
    Next::Again
}

/// Why pages leave the balloon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The host's target (or the driver going).
    Host,
    /// An OOM notification: inflation then waits for the host to ask again.
    Oom,
}

/// Result of [`deflate`].
enum Deflated {
    /// This many kernel pages left the balloon.
    Pages(usize),
    /// Nothing to take now: what is left is isolated by compaction (it
    /// returns shortly), or the device is frozen.
    Busy,
}

/// Takes up to `pages` kernel pages out of the balloon. The host hears of
/// them before the guest gets them back, whatever the features.
/// `last` says no round follows at once (the pages are then back in the
/// guest before the host sees the new size).
fn deflate(core: &BalloonCore, pages: usize, why: Why, last: bool) -> Deflated {
    deflate_locked(core, &mut core.data().state.lock(), pages, why, last)
}

/// [`deflate`], under the balloon lock: at most one round
/// ([`logic::pages_per_round`]).
fn deflate_locked(
    core: &BalloonCore,
    st: &mut State,
    pages: usize,
    why: Why,
    last: bool,
) -> Deflated {
    let sh = core.data();
    if st.queues.is_none() {
        return Deflated::Busy;
    }
    // Pages on their way in are the balloon's once the host has them.
    settle(core, st);
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
            sh.publish(st);
            return Deflated::Pages(0);
        }
        return Deflated::Busy;
    }
    if why == Why::Oom {
        sh.oom_pause.store(true, Ordering::Release);
    }
    let mut lens = [0usize; MSGS_PER_KICK];
    logic::encode_pages(
        st.out.as_slice().iter().map(|p| p.pfn()),
        PAGE_SIZE,
        st.msg.as_mut_slice(),
        &mut lens,
    );
    if let Some(q) = st.queues.as_mut() {
        sh.tell(&mut q.deflate, &st.msg, &lens, &sh.stats.deflate_msgs);
    }
    // Now the guest gets the pages back: later (on another CPU) while the
    // host is being told of the next round, unless this is the last.
    sh.free_deflated(st, got, why == Why::Host && !last);
    Deflated::Pages(got)
}

/// Deflates the whole balloon (remove, freeze), telling the host.
fn drain(core: &BalloonCore) {
    let sh = core.data();
    // No inflation round follows (the update work is stopped or frozen).
    sh.filler.clear();
    let round = logic::pages_per_round(sh.fpp);
    loop {
        let held = {
            let mut st = sh.state.lock();
            settle(core, &mut st);
            logic::frames_to_pages(st.held, sh.fpp) as usize
        };
        if held == 0 {
            break;
        }
        if let Deflated::Busy = deflate(core, round, Why::Host, held <= round) {
            msleep(10);
        }
    }
}

/// Freeze: every page goes back to the guest (the host told first), then
/// [`stop_queues`]. Remove does the same in two steps, with the OOM
/// notifier taken off its chain in between.
fn drain_and_stop(core: &BalloonCore) {
    drain(core);
    stop_queues(core);
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

/// The work that follows the host's target.
struct UpdateSize(Arc<BalloonCore>);

impl WorkHandler for UpdateSize {
    fn run(&self, _me: &Running<'_>) -> Next {
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
        let Ok(num_pages) = sh.config.read(vb::NUM_PAGES) else {
            return Next::Idle;
        };
        sh.stats
            .target_frames
            .store(num_pages.into(), Ordering::Relaxed);
        let target = logic::target_frames(num_pages, sh.fpp);
        let (held, inflating) = {
            let st = sh.state.lock();
            (st.held, st.inflating)
        };
        // Pages on their way in count towards the target: the next round
        // is allocated while the host takes them.
        let step = logic::next_step(target, held + inflating, sh.fpp);
        let oom_pause = sh.oom_pause.load(Ordering::Acquire);
        if !matches!(step, Step::Inflate(_)) || oom_pause {
            // No inflation round follows: what was allocated for one goes
            // back (an OOM notification may have found it busy).
            sh.filler.clear();
        }
        match step {
            // After an OOM deflation the guest needs the memory more than
            // the host does; wait for the host to ask again.
            Step::Inflate(_) if oom_pause => {
                settle(core, &mut sh.state.lock());
                Next::Idle
            }
            Step::Inflate(n) => {
                // And the round after, if this one leaves the balloon short.
                let after = held + inflating + n as u64 * u64::from(sh.fpp);
                let next = match logic::next_step(target, after, sh.fpp) {
                    Step::Inflate(m) => m,
                    _ => 0,
                };
                inflate(core, n, next)
            }
            // Anything else is decided on what the host has taken.
            _ if inflating != 0 => {
                settle(core, &mut sh.state.lock());
                Next::Again
            }
            Step::Deflate(n) => {
                let last = held.saturating_sub(n as u64 * u64::from(sh.fpp)) <= target;
                match deflate(core, n, Why::Host, last) {
                    Deflated::Pages(_) => Next::Again,
                    Deflated::Busy => Next::After(10),
                }
            }
            Step::Done => {
                sh.alloc_failures_in_a_row.store(0, Ordering::Relaxed);
                if sh.notes.clear(Note::Short) {
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

/// The OOM notifier's handler (DEFLATE_ON_OOM): each notification of a
/// burst deflates twice what the last did, from 1 MiB up to
/// `oom_deflate_max_mib` ([`logic::oom`]), in rounds of at most
/// [`MSGS_PER_KICK`] messages, the host told before each round's pages go
/// back.
struct OomDeflate(Arc<BalloonCore>);

impl OomHandler for OomDeflate {
    fn out_of_memory(&self) -> u64 {
        let core = &*self.0;
        let sh = core.data();
        add(&sh.stats.oom_notifications, 1);
        // Sleeps on the balloon lock for a few host round trips at most:
        // inflation allocates before it takes the lock, never while holding
        // it, and migration's two messages are one each. Then the round
        // inflation left with the host joins the balloon (one more round
        // trip at most), so that it can be given back too.
        let mut guard = sh.state.lock();
        let st = &mut *guard;
        settle(core, st);
        let now = Ktime::ktime_get().to_ms();
        let quiet = crate::OOM_QUIET_MS.get();
        if !st.ramp.in_burst(now, quiet) {
            add(&sh.stats.oom_bursts, 1);
        }
        let mib = st.ramp.step(now, crate::OOM_DEFLATE_MAX_MIB.get(), quiet);
        let want = logic::oom::pages(mib, sh.fpp, st.held) as usize;
        let round = logic::pages_per_round(sh.fpp);
        let mut freed = 0usize;
        while freed < want {
            match deflate_locked(core, st, (want - freed).min(round), Why::Oom, true) {
                Deflated::Pages(0) | Deflated::Busy => break,
                Deflated::Pages(n) => freed += n,
            }
        }
        add(&sh.stats.oom_deflated_pages, freed as u64);
        drop(guard);
        // Pages allocated ahead for an inflation round go back too, unless
        // the fill work is busy (the update work frees them then: the OOM
        // pause stops inflation). They count only with a deflation, which
        // set the pause: otherwise inflation would take them right back,
        // and a kill may be what the guest needs.
        let spared = sh.filler.try_clear();
        if freed == 0 {
            return 0;
        }
        (freed + spared) as u64
    }
}

/// The guest's memory figures and VM events, from the same sources as the
/// C driver's stats. May sleep.
fn snapshot() -> MemSnapshot {
    let mut s = MemSnapshot::default();
    if let Some(ev) = mm::vm_events() {
        s.has_events = true;
        s.swap_in_pages = ev.get(VmEvent::SwapIn);
        s.swap_out_pages = ev.get(VmEvent::SwapOut);
        s.major_faults = ev.get(VmEvent::MajorFault);
        s.minor_faults = ev.get(VmEvent::Fault);
        s.oom_kills = ev.get(VmEvent::OomKill);
        s.alloc_stalls = ev.alloc_stalls();
        s.async_scan_pages = ev.get(VmEvent::ScanKswapd);
        s.direct_scan_pages = ev.get(VmEvent::ScanDirect);
        s.async_reclaim_pages = ev.get(VmEvent::StealKswapd);
        s.direct_reclaim_pages = ev.get(VmEvent::StealDirect);
        s.hugetlb = ev.hugetlb();
    }
    let info = mm::meminfo();
    s.free_pages = info.free;
    s.total_pages = info.total;
    s.available_pages = mm::available_pages();
    s.cache_pages = mm::file_pages();
    s
}

/// Fills the stats buffer with `snap` and hands it to the host. The
/// snapshot is taken before the balloon lock: gathering it may sleep and
/// need not hold up inflation or the OOM path.
fn send_stats(sh: &Shared, q: &mut PostedQueue<OutBuf>, mut buf: KBox<OutBuf>, snap: &MemSnapshot) {
    let len = logic::encode_stats(snap, kernel::page::PAGE_SHIFT as u32, buf.as_mut_slice());
    buf.set_len(len);
    match q.post(buf) {
        Ok(()) => add(&sh.stats.stats_sent, 1),
        Err((_, e)) => {
            add(&sh.stats.host_errors, 1);
            dev_warn!(
                sh.dev,
                "cannot hand the stats buffer to the host: error {}\n",
                e.to_errno()
            );
        }
    }
}

/// The first stats buffer, filled (at probe and restore, as C does): the
/// host asks for stats by returning it. Made before the balloon lock is
/// taken (allocating under it could recurse into the OOM notifier).
struct StatsPrimer(Option<(KBox<OutBuf>, MemSnapshot)>);

impl StatsPrimer {
    fn new(dev: &Device<Core>) -> Result<Self> {
        if !dev.has_feature(feature::STATS_VQ) {
            return Ok(Self(None));
        }
        let buf = KBox::new(OutBuf::new(logic::stat::BUF_BYTES)?, GFP_KERNEL)?;
        Ok(Self(Some((buf, snapshot()))))
    }

    /// Hands the buffer to the host, under the balloon lock.
    fn send(self, sh: &Shared, st: &mut State) {
        let q = st.queues.as_mut().and_then(|q| q.stats.as_mut());
        if let (Some((buf, snap)), Some(q)) = (self.0, q) {
            send_stats(sh, q, buf, &snap);
        }
    }
}

/// The work that answers the host's stats requests (STATS_VQ): the host
/// returns the buffer when it wants fresh figures.
struct StatsRefresh(Arc<BalloonCore>);

impl WorkHandler for StatsRefresh {
    fn run(&self, _me: &Running<'_>) -> Next {
        let sh = self.0.data();
        sh.wakeup.process(WAKE_STATS);
        let snap = snapshot();
        let mut st = sh.state.lock();
        if let Some(q) = st.queues.as_mut().and_then(|q| q.stats.as_mut()) {
            if let Some((buf, _)) = q.take() {
                send_stats(sh, q, buf, &snap);
            }
        }
        drop(st);
        sh.wakeup.finish();
        Next::Idle
    }
}

/// Free page reporting (REPORTING): lends the ranges to the host.
struct ReportFree(Arc<BalloonCore>);

impl ReportHandler for ReportFree {
    fn report(&self, ranges: &ReportedRanges<'_>) -> Result {
        let sh = self.0.data();
        let mut st = sh.state.lock();
        let Some(q) = st.queues.as_mut().and_then(|q| q.reporting.as_mut()) else {
            // Frozen: the allocator keeps the pages and tries again later.
            return Err(EBUSY);
        };
        q.lend(ranges)
            .inspect_err(|_| add(&sh.stats.host_errors, 1))?;
        add(&sh.stats.reports_sent, 1);
        add(&sh.stats.reported_ranges, ranges.len().into());
        Ok(())
    }
}

/// The free page hint command ids: the host's latest (re-read from the
/// config space only after a config change) and the one of the run last
/// started.
struct HintCmd {
    received: AtomicU32,
    stale: AtomicBool,
    active: AtomicU32,
}

impl HintCmd {
    fn new() -> Self {
        Self {
            received: AtomicU32::new(hint::CMD_ID_STOP),
            // Read at once: a run may be under way as the driver binds.
            stale: AtomicBool::new(true),
            active: AtomicU32::new(hint::CMD_ID_STOP),
        }
    }

    /// The config changed: the id must be read again (any context).
    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// The host's id, read with `read` if it may have changed.
    fn current(&self, read: impl FnOnce() -> u32) -> u32 {
        if self.stale.swap(false, Ordering::AcqRel) {
            self.received.store(read(), Ordering::Release);
        }
        self.received.load(Ordering::Acquire)
    }

    /// What to do now that the host shows `received`.
    fn action(&self, received: u32) -> hint::Action {
        hint::action(received, self.active.load(Ordering::Acquire))
    }

    /// A run for `id` starts.
    fn start(&self, id: u32) {
        self.active.store(id, Ordering::Release);
    }
}

/// Mirrors the number of hint blocks the driver holds (returned ones in
/// `held`, and those still on the queue) in `hint_blocks_held`, which the
/// shrinker's count reads without a lock.
fn note_held(sh: &Shared, held: &PageBlocks) {
    let total = held.len() as u64 + sh.hints_in_flight.load(Ordering::Relaxed);
    sh.stats.hint_blocks_held.store(total, Ordering::Relaxed);
}

/// Takes back what the host returned on the free page queue: command ids
/// are dropped, hinted blocks join `held`. Under the balloon lock.
fn reap_hints(sh: &Shared, q: &mut PolledQueue<FreePageBuf>, held: &mut PageBlocks) {
    while let Some((buf, _)) = q.take() {
        if let Either::Right(block) = KBox::into_inner(buf) {
            sh.hints_in_flight.fetch_sub(1, Ordering::Relaxed);
            // Blocks of another order are not made here; one would be
            // freed at once.
            let _ = held.push(block);
        }
    }
    note_held(sh, held);
}

/// Frees up to `blocks` held hint blocks to the guest, counting them in
/// `counter`; returns how many.
fn free_hints(
    sh: &Shared,
    held: &mut PageBlocks,
    blocks: usize,
    counter: Option<&AtomicU64>,
) -> usize {
    let n = held.free(blocks);
    note_held(sh, held);
    if let Some(c) = counter {
        add(c, n as u64);
    }
    n
}

/// Frees every held hint block the host has returned by now, counting them
/// in `counter`; those still on the queue stay its own (until the host
/// returns them, or the layer resets the device on remove and freeze).
/// Returns how many the driver held, on the queue or not.
fn free_all_hints(sh: &Shared, counter: Option<&AtomicU64>) -> u64 {
    // Whatever the host returned first (no queue when frozen: nothing then).
    let _ = with_free_page_queue(sh, |_| Ok(()));
    let held = sh.stats.hint_blocks_held.load(Ordering::Relaxed);
    free_hints(sh, &mut sh.hints.lock(), usize::MAX, counter);
    held
}

fn hint_error(sh: &Shared, what: &str, e: Error) {
    add(&sh.stats.host_errors, 1);
    if sh.notes.first(Note::HintError) {
        dev_warn!(
            sh.dev,
            "free page hinting: cannot send {} to the host (error {}); further errors are only counted\n",
            what,
            e.to_errno()
        );
    }
}

/// Runs `f` on the free page queue, under the balloon lock, after taking
/// back what the host returned ([`reap_hints`]). `ENODEV` when the queues
/// are gone (frozen or being removed).
fn with_free_page_queue<T>(
    sh: &Shared,
    f: impl FnOnce(&mut PolledQueue<FreePageBuf>) -> Result<T>,
) -> Result<T> {
    let mut st = sh.state.lock();
    let q = st
        .queues
        .as_mut()
        .and_then(|q| q.free_page.as_mut())
        .ok_or(ENODEV)?;
    reap_hints(sh, q, &mut sh.hints.lock());
    f(q)
}

/// A command id as the free page queue carries it: little-endian `u32`.
fn hint_cmd_buf(sh: &Shared, id: u32) -> Result<KBox<FreePageBuf>> {
    let mut buf = OutBuf::new(4)?;
    buf.as_mut_slice().copy_from_slice(&id.to_le_bytes());
    if take_knob(&sh.knobs.short_hint_cmd) {
        buf.set_len(2);
    }
    Ok(KBox::new(Either::Left(buf), GFP_KERNEL)?)
}

/// Whether to inject the fault counted by `knob` now (and count it).
/// Knobs are only writable (in debugfs) on fault-injection kernels.
fn take_knob(knob: &AtomicU32) -> bool {
    cfg!(CONFIG_FAULT_INJECTION_DEBUG_FS)
        && knob.load(Ordering::Relaxed) != 0
        && knob
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok()
}

/// Hands `cmd` to the free page queue.
fn send_hint_cmd(sh: &Shared, id: u32, what: &str) -> Result {
    let buf = hint_cmd_buf(sh, id).inspect_err(|&e| hint_error(sh, what, e))?;
    with_free_page_queue(sh, |q| q.post(buf).map_err(|(_, e)| e))
        .inspect_err(|&e| hint_error(sh, what, e))
}

/// One hinting run for command id `id`: echo the id, hand the host free
/// blocks until none is left, the host changes the id or the work is being
/// stopped, then send stop. The blocks stay held (first by the queue, then,
/// once the host returns them, in `hints`) until the host says done, or the
/// shrinker or removal frees them.
fn hint_run(sh: &Shared, id: u32, me: &Running<'_>) {
    sh.hint_cmd.start(id);
    add(&sh.stats.hint_runs, 1);
    if send_hint_cmd(sh, id, "a start id").is_err() {
        return;
    }
    let mut pending: Option<KBox<FreePageBuf>> = None;
    let mut stalled_ms = 0u32;
    loop {
        if me.stopping() || !hint::keep_going(id, sh.hint_cmd_id()) {
            break;
        }
        let buf = match pending.take() {
            Some(b) => b,
            None => {
                // No free block left: everything free is hinted. This is how
                // a run normally ends, so it is not reported.
                let Some(block) = PageBlock::take_free(pages::MAX_ORDER) else {
                    break;
                };
                match KBox::new(Either::Right(block), GFP_KERNEL) {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
        };
        // One entry always stays free for the stop id that ends the run.
        let sent = with_free_page_queue(sh, |q| {
            if q.free_descriptors() <= 1 {
                return Ok(Some(buf));
            }
            q.post(buf).map_err(|(_, e)| e)?;
            sh.hints_in_flight.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        });
        match sent {
            Ok(None) => {
                add(&sh.stats.hinted_blocks, 1);
                stalled_ms = 0;
            }
            Ok(Some(buf)) => {
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
                pending = Some(buf);
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
    let _ = send_hint_cmd(sh, hint::CMD_ID_STOP, "a stop id");
}

/// The free page hint work (FREE_PAGE_HINT), on its own freezable,
/// CPU-intensive workqueue: a run may take all of the guest's free memory.
struct FreePageHint {
    core: Arc<BalloonCore>,
    /// Looks, since the host said done, for blocks it had not returned.
    done_polls: AtomicU32,
}

impl WorkHandler for FreePageHint {
    fn run(&self, me: &Running<'_>) -> Next {
        let sh = self.core.data();
        let received = sh.hint_cmd_id();
        match sh.hint_cmd.action(received) {
            hint::Action::ReturnAll => {
                free_all_hints(sh, Some(&sh.stats.hint_blocks_done));
                // Blocks still on the ring stay the queue's until the host
                // returns them, which it may do after saying done (QEMU's
                // hint thread empties the ring after the run's stop id,
                // beside this work). The queue raises no interrupt: look
                // again shortly, for a while.
                if sh.hints_in_flight.load(Ordering::Relaxed) == 0 {
                    self.done_polls.store(0, Ordering::Relaxed);
                } else if self.done_polls.fetch_add(1, Ordering::Relaxed) < hint::DONE_POLLS {
                    return Next::After(hint::DONE_POLL_MS);
                }
            }
            hint::Action::Start(id) => {
                self.done_polls.store(0, Ordering::Relaxed);
                hint_run(sh, id, me)
            }
            hint::Action::Nothing => {}
        }
        Next::Idle
    }
}

/// The shrinker of FREE_PAGE_HINT: under memory pressure, held hint blocks
/// go back to the guest before the host is done with them (allowed: the
/// host must keep whatever the guest writes to a hinted page later).
struct HintShrink(Arc<BalloonCore>);

impl ShrinkHandler for HintShrink {
    fn count(&self) -> u64 {
        let held = self.0.data().stats.hint_blocks_held.load(Ordering::Relaxed);
        held.saturating_mul(hint::block_pages(pages::MAX_ORDER))
    }

    fn scan(&self, nr_to_scan: u64) -> u64 {
        let sh = self.0.data();
        let want = hint::blocks_for(nr_to_scan, pages::MAX_ORDER);
        // Reclaim never waits here: busy locks (a run adding a block, DONE
        // freeing all) leave the work for the next pass.
        let Some(mut held) = sh.hints.try_lock() else {
            return 0;
        };
        // Blocks the host returned since the queue was last looked at.
        if let Some(mut st) = sh.state.try_lock() {
            if let Some(q) = st.queues.as_mut().and_then(|q| q.free_page.as_mut()) {
                reap_hints(sh, q, &mut held);
            }
        }
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let n = free_hints(sh, &mut held, want, Some(&sh.stats.hint_blocks_shrunk));
        (n as u64).saturating_mul(hint::block_pages(pages::MAX_ORDER))
    }
}

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
fn registering<'a>(dev: &'a Device<Core>, what: &'a str) -> impl FnOnce(&Error) + 'a {
    move |e| dev_err!(dev, "cannot register {}: error {}\n", what, e.to_errno())
}

#[vtable]
impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const ID_TABLE: virtio::IdTableRef = crate::BALLOON_IDS.as_ref();
    const FEATURES: &'static [Feature] = &FEATURES;

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
                    state <- new_mutex!(state, "Balloon::state"),
                    freer,
                    filler,
                    scratch <- new_mutex!(Batch::with_capacity(round)?, "Balloon::scratch"),
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
        // (the image need not hold them), then every page, and the driver
        // lets go of the queues (restore sets them up again).
        free_all_hints(self.core.data(), None);
        drain_and_stop(&self.core);
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
