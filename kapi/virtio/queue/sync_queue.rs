// SPDX-License-Identifier: GPL-2.0

//! Synchronous round trips: buffers lent until the device has used them.

use super::*;

/// What [`SyncQueue::send`] did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    /// Buffers sent (and returned by the device): at least one.
    pub(crate) count: usize,
    /// Buffers the device returned with a used length other than 0.
    pub(crate) odd_lengths: u32,
}

/// A queue for synchronous round trips.
///
/// # Invariants
///
/// The buffers on this queue's ring are borrowed by the call that added
/// them ([`SyncQueue::send`], [`SyncQueue::lend`]), which does not return
/// before the device has used every one or has been reset: no token on the
/// ring outlives its call, and none is owned (the queue's `drop_token` does
/// nothing).
pub(crate) struct SyncQueue {
    pub(super) core: Arc<QueueCore>,
}

impl SyncQueue {
    /// Number of descriptors in the ring (0 when not live). Never sleeps.
    pub(crate) fn ring_size(&self) -> u32 {
        self.core.ring_size()
    }

    /// Sends the parts `(offset, len)` of `buf` listed in `parts`, one
    /// descriptor each, kicks the device once and sleeps until it has used
    /// every one. Fills the ring at most: [`Sent::count`] says how many of
    /// `parts` went (at least one), and the caller sends the rest in
    /// another call. Empty parts are refused (`EINVAL`).
    ///
    /// The device only reads these buffers, so it must report a used length
    /// of 0; other lengths are counted in [`Sent::odd_lengths`]. Fails with
    /// `EIO` if the ring broke, after resetting the device: when this
    /// returns, the device holds nothing of `buf`. Process context.
    pub(crate) fn send(&mut self, buf: &OutBuf, parts: &[(usize, usize)]) -> Result<Sent> {
        might_sleep!();
        if parts.is_empty() {
            return Err(EINVAL);
        }
        let mut regions = [const { None::<Region> }; MAX_PARTS];
        for (slot, &(offset, len)) in regions.iter_mut().zip(parts) {
            let part = buf
                .bytes
                .get(offset..offset.saturating_add(len))
                .ok_or(EINVAL)?;
            if part.is_empty() {
                return Err(EINVAL);
            }
            *slot = Some(Region {
                addr: part.as_ptr().cast_mut().cast(),
                len: part.len() as u32,
                device_writes: false,
            });
        }
        let life = self.core.bind.life.read();
        let vq = self.core.open_vq(&life)?;
        let mut added = 0usize;
        for r in regions.iter().flatten() {
            // The token is the part's address; nobody dereferences it.
            // SAFETY: `vq` is open while `life` is held; `buf` is borrowed
            // until we return, and we return only once the device gave it
            // back or was reset and the ring let go of it (`settle`).
            if let Err(e) = unsafe { self.core.add(vq, r, r.addr) } {
                if added == 0 {
                    return Err(e);
                }
                break;
            }
            added += 1;
        }
        let mut sent = Sent {
            count: added,
            odd_lengths: 0,
        };
        let waited = self.finish(vq, added, |len| {
            if len != 0 {
                sent.odd_lengths += 1;
            }
        });
        drop(life);
        self.settle(waited).map(|()| sent)
    }

    /// Lends the device-writable scatterlist `sg` as one buffer, kicks the
    /// device and sleeps until it has used it. Adds without allocating
    /// (`GFP_NOWAIT`). As for [`SyncQueue::send`], when this returns the
    /// device holds nothing of `sg`, and the ring no longer maps it.
    pub(crate) fn lend(&mut self, sg: &dyn LentSg) -> Result {
        might_sleep!();
        let (raw, nents) = sg.raw();
        if nents == 0 {
            return Err(EINVAL);
        }
        let life = self.core.bind.life.read();
        let vq = self.core.open_vq(&life)?;
        let token = vq.as_ptr().cast::<c_void>();
        // We return only once the device gave `sg` back, or it was reset
        // and the ring let go of the entries (`settle`).
        // SAFETY: `sg` is a terminated list of `nents` valid entries whose
        // memory nobody else touches while it is borrowed (`LentSg`), for as
        // long as the device has it (see above); `vq` is open under `life`.
        to_result(unsafe {
            bindings::virtqueue_add_inbuf(
                vq.as_ptr(),
                raw,
                nents,
                token,
                bindings::GFP_NOWAIT | bindings::__GFP_NOWARN,
            )
        })?;
        let waited = self.finish(vq, 1, |_| {});
        drop(life);
        self.settle(waited)
    }

    /// Kicks and waits for `n` buffers, calling `each` with their lengths.
    pub(super) fn finish(
        &self,
        vq: NonNull<bindings::virtqueue>,
        n: usize,
        mut each: impl FnMut(u32),
    ) -> Result {
        self.core.quiet(vq);
        let inject = self.core.kick(vq);
        self.core.inject_break(inject);
        for _ in 0..n {
            each(self.core.wait_used(vq)?.1);
        }
        Ok(())
    }

    /// After a wait, with `life` released: on failure the device may still
    /// hold what was lent, so it is reset, and the ring lets go of the
    /// buffers (unmapping them), before the caller gets the error.
    pub(super) fn settle(&self, waited: Result) -> Result {
        if waited.is_err() {
            self.core.bind.reset_after_error(&self.core);
        }
        waited
    }
}

/// Most parts one [`SyncQueue::send`] takes.
pub(crate) const MAX_PARTS: usize = 16;
