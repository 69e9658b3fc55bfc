/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What bindgen reads for kapi/bindings_generated.rs: the kernel interfaces
 * the driver uses that the 6.12 `bindings` crate does not cover, and the
 * module's C helpers. Items the kernel crate already has are left out of
 * the output (scripts/kbuild-bindgen.sh), so one C type is one Rust type.
 */
#include <linux/balloon_compaction.h>
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/gfp.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/notifier.h>
#include <linux/oom.h>
#include <linux/page_reporting.h>
#include <linux/poison.h>
#include <linux/scatterlist.h>
#include <linux/shrinker.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_ids.h>
#include <uapi/linux/virtio_ring.h>

#include "helpers.h"

/* Macros bindgen cannot evaluate, as constants it can. */
const gfp_t VBRS_CONST___GFP_NORETRY = ___GFP_NORETRY;
const gfp_t VBRS_CONST___GFP_NOMEMALLOC = ___GFP_NOMEMALLOC;
