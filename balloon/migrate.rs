// SPDX-License-Identifier: GPL-2.0

//! Page migration (compaction, memory offlining): a balloon page moves to
//! another frame, and the host hears of both.

use super::*;

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
