// SPDX-License-Identifier: GPL-2.0

//! What a queue carries: memory a device may read or write, owned by the
//! buffer, and what may ride along with it.

use super::*;

/// Memory a device can be handed, owned by the value.
///
/// # Safety
///
/// [`Buffer::region`] describes memory in the kernel's direct map that
/// `self` owns, valid for the length given, at an address that does not
/// change when `self` is moved, and that nothing but the device reads or
/// writes while the value sits on a queue. With `device_writes`, the device
/// may write all of it. A buffer the device still held at a reset is dropped
/// with locks held, which is why a buffer must be [`DropsAnywhere`].
pub(crate) unsafe trait Buffer: DropsAnywhere {
    /// The memory and whether the device may write it.
    fn region(&self) -> Region;
}

/// What [`Buffer::region`] returns.
pub(crate) struct Region {
    pub(crate) addr: *mut c_void,
    pub(crate) len: u32,
    pub(crate) device_writes: bool,
}

/// A buffer the device reads: kmalloc'd memory (never the stack, which may
/// not be in the direct map), filled by the driver.
///
/// A buffer has a capacity, fixed at creation, and a length (at first the
/// whole capacity): what the device is handed when it is posted.
pub(crate) struct OutBuf {
    pub(super) bytes: KVec<u8>,
    pub(super) len: usize,
}

impl OutBuf {
    /// A zeroed buffer of `len` bytes (at least one: an empty buffer has no
    /// memory a device could be pointed at).
    pub(crate) fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        Ok(Self {
            bytes: KVec::from_elem(0u8, len, GFP_KERNEL)?,
            len,
        })
    }

    /// The whole capacity, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Sets how much of the buffer the device is handed (at most all; an
    /// empty one cannot be posted).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.bytes.len());
    }
}

// SAFETY: dropping an `OutBuf` frees its `KVec` of bytes (the slab
// allocator's own locks).
unsafe impl DropsAnywhere for OutBuf {}

// SAFETY: `KVec` memory is kmalloc'd (direct map), owned, and does not move
// with the `KVec`; `len` never exceeds it; the device only reads it.
unsafe impl Buffer for OutBuf {
    fn region(&self) -> Region {
        Region {
            addr: self.bytes.as_ptr().cast_mut().cast(),
            len: self.len as u32,
            device_writes: false,
        }
    }
}

/// One of two kinds of buffer, for a queue that carries both.
pub(crate) enum Either<A, B> {
    /// The first kind.
    Left(A),
    /// The second kind.
    Right(B),
}

// SAFETY: dropping it drops the one value it holds, which is
// `DropsAnywhere` itself.
unsafe impl<A: DropsAnywhere, B: DropsAnywhere> DropsAnywhere for Either<A, B> {}

// SAFETY: delegates to the held buffer, which meets the contract itself.
unsafe impl<A: Buffer, B: Buffer> Buffer for Either<A, B> {
    fn region(&self) -> Region {
        match self {
            Either::Left(a) => a.region(),
            Either::Right(b) => b.region(),
        }
    }
}

/// A value whose `Drop` may run wherever a queue drops what it holds: after
/// a reset, with the binding's lifecycle lock held for writing and under
/// whatever lock the driver held when the failed transfer was made (a queue
/// operation can find the device broken and reset it), in process context.
///
/// # Safety
///
/// Dropping a value of the type takes no lock but the kernel's own
/// internal ones (the page and slab allocators'), never waits for other
/// work or tasks, and uses no virtio queue or config space: otherwise a
/// reset could deadlock on a lock its caller holds, or on itself.
pub(crate) unsafe trait DropsAnywhere: Send + 'static {}

// SAFETY: dropping a `KBox` or `KVec` frees kmalloc'd memory (the slab
// allocator's own locks) after dropping its contents, which are
// `DropsAnywhere` themselves.
unsafe impl<T: DropsAnywhere> DropsAnywhere for KBox<T> {}
// SAFETY: as for `KBox`.
unsafe impl<T: DropsAnywhere> DropsAnywhere for KVec<T> {}

// SAFETY: plain numbers have no `Drop`.
unsafe impl DropsAnywhere for u8 {}
// SAFETY: as for `u8`.
unsafe impl DropsAnywhere for u32 {}
// SAFETY: as for `u8`.
unsafe impl DropsAnywhere for u64 {}

/// A buffer and a value that goes with it, for as long as the device has the
/// buffer: the queue owns both until the device returns the buffer, so what
/// the value stands for (pages the buffer describes to the host, say) is
/// not reused before the host is done with it. If the device is reset
/// first, both are dropped after the reset, with locks held: `with` must be
/// [`DropsAnywhere`]. The device sees only `buf`.
pub(crate) struct Bundle<B, T: DropsAnywhere> {
    /// What the device is handed.
    pub(crate) buf: B,
    /// What goes with it.
    pub(crate) with: T,
}

// SAFETY: dropping a bundle drops `buf` and `with`, both `DropsAnywhere`
// (`B: Buffer` implies it).
unsafe impl<B: Buffer, T: DropsAnywhere> DropsAnywhere for Bundle<B, T> {}

// SAFETY: the region is `buf`'s, which the bundle owns, so `B`'s guarantees
// hold for it as they would for `buf` alone (moving the bundle moves `buf`,
// whose memory does not move with it). The device never sees `with`.
unsafe impl<B: Buffer, T: DropsAnywhere> Buffer for Bundle<B, T> {
    fn region(&self) -> Region {
        self.buf.region()
    }
}

/// A scatterlist of memory a device may write, lent for one
/// [`SyncQueue::lend`] call.
///
/// # Safety
///
/// [`LentSg::raw`] returns a scatterlist of `nents` valid entries whose
/// last one carries the end marker (`virtqueue_add_*` walks it with
/// `sg_next`), of direct-map memory that nothing else reads or writes while
/// the value is borrowed.
pub(crate) unsafe trait LentSg {
    /// The entries.
    fn raw(&self) -> (*mut bindings::scatterlist, u32);
}
