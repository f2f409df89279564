// SPDX-License-Identifier: GPL-2.0

//! UPM: user-guided page merging.
//!
//! A process calls `madvise(addr, len, MADV_UPM_MERGEABLE)` on memory it knows is shareable;
//! within that call, identical anonymous pages are merged into write-protected KSM pages, each
//! with a real stable node, so that they migrate, swap and retire like ksmd's. Pages with no
//! twin yet are only recorded as candidates and stay ordinary pages. The kernel patch provides
//! the madvise hook, the merge primitives and the stable nodes; this module provides the policy:
//! the content-hash index, the walk of advised ranges, counters and tunables in
//! `/sys/kernel/mm/upm/`.
//!
//! Unloading the module unregisters the hook and drops its references on stable nodes and
//! candidates. Merged pages stay merged: they are KSM pages with stable nodes that core mm
//! migrates, reclaims, copies on write and frees without the module. After a reload, advising
//! them again puts them back in the index.

use kernel::{c_str, prelude::*, sync::Arc};

mod advise;
mod call;
mod decide;
mod domain;
mod ffi;
mod groups;
mod index;
mod pair;
mod params;
mod stats;
mod sysfs;

use advise::Upm;
use ffi::{sysfs::SysfsDir, upm::Provider, workqueue::Periodic};

module! {
    type: UpmModule,
    name: "upm",
    author: "UPM developers",
    description: "User-guided page merging: synchronous MADV_UPM_MERGEABLE",
    license: "GPL",
}

struct UpmModule {
    // Fields drop in order: first stop new calls, then the files and the sweep, so that
    // nothing uses the state when its last reference goes.
    _provider: Provider<Upm>,
    _sysfs: SysfsDir<Upm>,
    _sweep: Periodic<Upm>,
}

impl kernel::Module for UpmModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let upm = Arc::pin_init(Upm::new()?, GFP_KERNEL)?;
        let sweep_ms = stats::TUNABLES
            .sweep_millisecs
            .load(core::sync::atomic::Ordering::Relaxed);
        let sweep = Periodic::start(upm.clone(), sweep_ms)?;
        let sysfs = SysfsDir::create(c_str!("upm"), upm.clone())?;
        let provider = Provider::register(module, upm)?;
        pr_info!("loaded; madvise(MADV_UPM_MERGEABLE) enabled\n");
        Ok(Self {
            _provider: provider,
            _sysfs: sysfs,
            _sweep: sweep,
        })
    }
}

impl Drop for UpmModule {
    fn drop(&mut self) {
        pr_info!("unloading; merged pages stay merged\n");
    }
}
