// SPDX-License-Identifier: GPL-2.0
//! Features can only be refused in `validate`: a bound device (probe, or a
//! work item) has no way to rewrite the negotiated feature word.
// expect: E0599
// expect: no method named `clear_feature` found

use crate::kapi::{
    virtio::{Core, Device},
    virtio_balloon::feature,
};

fn misuse(dev: &Device<Core>) {
    dev.clear_feature(feature::STATS_VQ);
}
