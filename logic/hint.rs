// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (FREE_PAGE_HINT): the command-id handshake with the
//! host and the arithmetic of hinted blocks.
//!
//! The host starts a hinting run by writing a new command id (2 or more)
//! to `free_page_hint_cmd_id`. The driver echoes the id on the free page
//! queue, hands the host free blocks for as long as the id stays the same,
//! and ends with [`CMD_ID_STOP`]. The blocks stay out of the guest's free
//! lists until the host writes [`CMD_ID_DONE`], or until memory pressure
//! (the shrinker) or the driver's removal takes them back.

/// `VIRTIO_BALLOON_CMD_ID_STOP`: the host wants no more hints for now.
pub(crate) const CMD_ID_STOP: u32 = 0;
/// `VIRTIO_BALLOON_CMD_ID_DONE`: the host is done with the hints; every
/// held block goes back to the guest.
pub(crate) const CMD_ID_DONE: u32 = 1;

/// Longest a run waits, in total, for room in a full hint ring before it
/// ends early (a host that stopped taking buffers).
pub(crate) const STALL_MS: u32 = 1000;
/// How long a run sleeps while the hint ring is full.
pub(crate) const STALL_POLL_MS: u32 = 5;
/// After done, how often the driver looks for blocks the host had not
/// returned yet, and how many times (then it leaves them to the next
/// run, the shrinker or removal): 10 s in all.
pub(crate) const DONE_POLL_MS: u32 = 50;
pub(crate) const DONE_POLLS: u32 = 200;

/// What the hint work does when woken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Action {
    /// Give every held block back to the guest.
    ReturnAll,
    /// Start a run for this command id.
    Start(u32),
    /// Nothing: the host said stop, or repeated the id of the last run.
    Nothing,
}

/// The action for the command id the host now shows, `received`, when
/// the last run the driver started was for `active`.
pub(crate) const fn action(received: u32, active: u32) -> Action {
    match received {
        CMD_ID_DONE => Action::ReturnAll,
        CMD_ID_STOP => Action::Nothing,
        id if id == active => Action::Nothing,
        id => Action::Start(id),
    }
}

/// Whether a run for `active` goes on while the host shows `received`:
/// a stop, a done or a newer id all end it.
pub(crate) const fn keep_going(active: u32, received: u32) -> bool {
    received == active
}

/// Kernel pages in one hint block of `order`.
pub(crate) const fn block_pages(order: u32) -> u64 {
    if order >= 63 {
        1 << 62
    } else {
        1 << order
    }
}

/// Blocks to give back when the shrinker asks for `pages` kernel pages:
/// whole blocks, rounded up, as a block cannot be split.
pub(crate) const fn blocks_for(pages: u64, order: u32) -> u64 {
    pages.div_ceil(block_pages(order))
}
