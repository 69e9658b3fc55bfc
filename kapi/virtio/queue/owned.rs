// SPDX-License-Identifier: GPL-2.0

//! Owned buffers: posted, polled and waited queues.

use super::*;

/// A queue of owned buffers of type `B`; see [`PostedQueue`],
/// [`PolledQueue`] and [`WaitedQueue`]. Its operations never sleep, except
/// a waited queue's `kick` and `wait` (process context only): the others
/// may be used in any context, [`super::Driver::buffers_used`] included.
///
/// # Invariants
///
/// Every token on this queue's ring is a `KBox<B>` turned into a raw
/// pointer by the add that put it there, owned by the ring until the
/// device returns it (`take` and `wait` turn it back into the box) or the
/// device is reset (the queue's `drop_token`, `drop_boxed::<B>`, drops it
/// then). Only this handle adds to the ring, and only `B`s, so `take` and
/// `wait` may read any token they get back as a `KBox<B>`.
pub(crate) struct BufQueue<B: Buffer, K> {
    pub(super) core: Arc<QueueCore>,
    /// Buffers this handle put on the ring that it has not taken back (a
    /// [`WaitedQueue`] keeps it exact: it sets it to 0 when the device was
    /// reset and the ring dropped them).
    pub(super) in_flight: usize,
    /// Buffers were added since the last kick (a [`WaitedQueue`]'s `wait`
    /// kicks first: the device might not look at them otherwise).
    pub(super) unkicked: bool,
    pub(super) _b: PhantomData<fn(B) -> (B, K)>,
}

/// Marker of [`PostedQueue`].
pub(crate) struct Posted;
/// Marker of [`PolledQueue`].
pub(crate) struct Polled;

/// A queue the device answers when it likes, with interrupts.
pub(crate) type PostedQueue<B> = BufQueue<B, Posted>;
/// A queue the driver polls.
pub(crate) type PolledQueue<B> = BufQueue<B, Polled>;
/// Marker of [`WaitedQueue`].
pub(crate) struct Waited;
/// A queue whose sender hands over owned buffers, goes on, and later sleeps
/// until the device returns them.
pub(crate) type WaitedQueue<B> = BufQueue<B, Waited>;

/// Disciplines whose `post` kicks at once, under the queue's lock, so that
/// it never sleeps. A waited queue has no `post`: it adds, then kicks
/// outside that lock ([`WaitedQueue::kick`]).
pub(crate) trait KickOnPost {}
impl KickOnPost for Posted {}
impl KickOnPost for Polled {}

impl<B: Buffer, K> BufQueue<B, K> {
    /// Which queue this is (as [`super::Driver::buffers_used`] names it),
    /// once live.
    pub(crate) fn id(&self) -> Option<QueueId> {
        // SAFETY: an open virtqueue (under its lock).
        let index = self
            .core
            .with_open(|vq| Ok(unsafe { (*vq.as_ptr()).index }));
        index.ok().map(|i| QueueId(i as u16))
    }

    /// Number of descriptors in the ring (0 when not live).
    pub(crate) fn ring_size(&self) -> u32 {
        self.core.ring_size()
    }

    /// Free descriptors in the ring right now (0 when not live).
    pub(crate) fn free_descriptors(&self) -> u32 {
        // SAFETY: an open virtqueue (under its lock); a plain field.
        self.core
            .with_open(|vq| Ok(unsafe { (*vq.as_ptr()).num_free }))
            .unwrap_or(0)
    }

    /// Puts `buf` on the ring, and with `kick` kicks the device under the
    /// same lock; returns what [`QueueCore::kick`] returned (false without
    /// a kick). On failure the buffer comes back with the error.
    pub(super) fn put(
        &mut self,
        buf: KBox<B>,
        kick: bool,
    ) -> core::result::Result<bool, (KBox<B>, Error)> {
        let region = buf.region();
        let token = KBox::into_raw(buf).cast::<c_void>();
        let core = &self.core;
        let put = core.with_open(|vq| {
            // SAFETY: `vq` is open (under its lock). The buffer is owned by
            // the ring from here (its token) until `take`, `wait` or the
            // teardown's detach turns the token back into the box.
            unsafe { core.add(vq, &region, token) }?;
            Ok(kick && core.kick(vq))
        });
        match put {
            Ok(inject) => {
                self.in_flight += 1;
                Ok(inject)
            }
            // SAFETY: not added, so the box is still ours.
            Err(e) => Err((unsafe { KBox::from_raw(token.cast::<B>()) }, e)),
        }
    }

    /// A buffer the device has returned, with its used length.
    pub(crate) fn take(&mut self) -> Option<(KBox<B>, u32)> {
        let (token, len) = self
            .core
            .with_open(|vq| self.core.get_used(vq).ok_or(ENOENT))
            .ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        // SAFETY: every token on this ring is a `KBox<B>` from `post` (or
        // `add`), and the core hands each back once.
        Some((unsafe { KBox::from_raw(token.as_ptr().cast::<B>()) }, len))
    }
}

impl<B: Buffer, K: KickOnPost> BufQueue<B, K> {
    /// Hands `buf` to the device and kicks it. The queue owns the buffer
    /// until [`BufQueue::take`] returns it (or the device is reset, when it
    /// is dropped). On failure the buffer comes back with the error. The
    /// buffer comes boxed, so that posting never allocates.
    pub(crate) fn post(&mut self, buf: KBox<B>) -> core::result::Result<(), (KBox<B>, Error)> {
        let inject = self.put(buf, true)?;
        self.core.inject_break(inject);
        Ok(())
    }
}

impl<B: Buffer> WaitedQueue<B> {
    /// Puts `buf` on the ring without telling the device yet
    /// ([`WaitedQueue::kick`] does). The queue owns the buffer from here
    /// until [`WaitedQueue::wait`] returns it, or the device is reset and
    /// it is dropped. On failure (`ENOSPC`: the ring is full; `ENODEV`:
    /// the queue is gone) the buffer comes back with the error. Never
    /// sleeps.
    pub(crate) fn add(&mut self, buf: KBox<B>) -> core::result::Result<(), (KBox<B>, Error)> {
        self.put(buf, false)?;
        self.unkicked = true;
        Ok(())
    }

    /// Tells the device about the buffers added since the last kick.
    /// Process context; may sleep (it takes the binding's `life`, which
    /// setup, reset and teardown hold for writing). The kick runs with
    /// interrupts on and no spinlock held: a host that answers during the
    /// kick, as QEMU does without ioeventfd, does its work there.
    pub(crate) fn kick(&mut self) {
        might_sleep!();
        self.unkicked = false;
        let core = &self.core;
        // Holding `life` for reading keeps the queue from being closed, its
        // device reset or its virtqueue deleted until the kick is over.
        let life = core.bind.life.read();
        let inject = core.open_vq(&life).map(|vq| {
            // The waiter asks for the interrupt only when it has to sleep.
            core.quiet(vq);
            core.kick(vq)
        });
        drop(life);
        core.inject_break(inject.unwrap_or(false));
    }

    /// Buffers on the ring, added and not yet returned: 0 once the queue is
    /// closed (its device reset, by this handle's `wait` or by anything
    /// else, drops what the ring held).
    pub(crate) fn in_flight(&self) -> usize {
        if self.core.is_open() {
            self.in_flight
        } else {
            0
        }
    }

    /// Sleeps until the device returns one of the buffers on the ring (in
    /// whatever order it uses them) and returns it with its used length;
    /// kicks first if buffers were added since the last kick.
    /// `ENOENT` at once if none is on the ring. On any other failure
    /// (`EIO`: the ring broke or the device needs a reset; `ENODEV`: the
    /// queue is gone) the device has been reset and every buffer it had
    /// dropped before this returns: [`WaitedQueue::in_flight`] is 0 then.
    /// Process context.
    pub(crate) fn wait(&mut self) -> Result<(KBox<B>, u32)> {
        might_sleep!();
        if self.in_flight == 0 {
            return Err(ENOENT);
        }
        if self.unkicked {
            self.kick();
        }
        let life = self.core.bind.life.read();
        let used = self
            .core
            .open_vq(&life)
            .and_then(|vq| self.core.wait_used(vq));
        drop(life);
        match used {
            Ok((token, len)) => {
                self.in_flight -= 1;
                // SAFETY: every token on this ring is a `KBox<B>` from
                // `add`, and the core hands each back once.
                Ok((unsafe { KBox::from_raw(token.as_ptr().cast::<B>()) }, len))
            }
            Err(e) => {
                // Reset (unless a teardown or an earlier reset closed the
                // queue, which reset the device and dropped its buffers
                // already): nothing of ours is on the ring after this.
                self.core.bind.reset_after_error(&self.core);
                self.in_flight = 0;
                Err(e)
            }
        }
    }
}
