// SPDX-License-Identifier: GPL-2.0

//! The module's state, and the walk of one advised range.
//!
//! MADV_UPM_MERGEABLE looks at every page of the range that is present and, for an anonymous
//! page in a VMA that KSM's rules allow, replaces it by the zero page (all-zero contents), merges
//! it with an identical merged page or candidate found through the content-hash index, or else
//! records it as a candidate, leaving it an ordinary page. Everything else is skipped and
//! counted, never an error, as KSM does. MADV_UPM_UNMERGEABLE gives every merged page in the
//! range a private copy again.
//!
//! `mmap_lock` is taken for reading in batches of [`BATCH_PAGES`]: between batches the walk
//! drops it, reschedules and checks for a fatal signal, so a long call neither starves writers
//! of the mm nor outlives a kill. Unmapped parts of the range make the call fail with `ENOMEM`
//! after the mapped parts were processed, as madvise(2) specifies.
//!
//! An advised address goes down one way: the walk here hands each page to the decision about
//! it ([`crate::decide`]), which looks up the index ([`crate::index`]) and reaches candidates
//! of other processes through [`crate::pair`]; the call ([`crate::call`]) records what became
//! of each page and, at its end, tries again what was busy.

use crate::{
    call::{Call, Stage},
    domain::Domain,
    ffi::{
        self,
        mm::{virt::VmaRef, MmWithUser, MmapReadGuard},
        page::PAGE_SIZE,
        task,
        upm::{self, AdviseHandler, MergeableVma},
        workqueue::PeriodicHandler,
    },
    groups::Groups,
    index::ContentIndex,
    stats::{enabled, Skip, STATS, TUNABLES},
};
use kernel::prelude::*;

/// Pages handled per hold of `mmap_lock`.
const BATCH_PAGES: usize = 512;

/// Delay before the next run of a sweep pass that is not complete, in milliseconds.
const SWEEP_CONTINUE_MS: u32 = 10;

/// The module's state: the content-hash index and what it needs to classify pages.
#[pin_data]
pub(crate) struct Upm {
    #[pin]
    pub(crate) index: ContentIndex,
    /// The groups root assigned to cgroups, for `domain_policy=group`.
    #[pin]
    pub(crate) groups: Groups,
    /// Secret seed of the content hash, chosen at load: nobody can craft pages that collide.
    pub(crate) seed: u64,
    /// Hash of an all-zero page with `seed`.
    pub(crate) zero_hash: u64,
}

impl Upm {
    /// New state with an empty index.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let zeroes = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
        let seed = ffi::random_u64();
        let zero_hash = ffi::xxh64(&zeroes, seed);
        let index = ContentIndex::new()?;
        Ok(pin_init!(Self {
            index <- index,
            groups <- Groups::new(),
            seed,
            zero_hash,
        }))
    }

    /// The merge domain of `mm` under the current policy.
    ///
    /// # Errors
    ///
    /// `ESRCH` if the mm has no owner any more (it is exiting).
    pub(crate) fn domain_of(&self, mm: &MmWithUser) -> Result<Domain> {
        Domain::of(mm, &self.groups)
    }

    /// Calls `visit` on each part of `start..end` covered by a VMA, with `mmap_lock` held.
    fn walk(
        &self,
        mm: &MmWithUser,
        start: usize,
        end: usize,
        mut visit: impl FnMut(&MmapReadGuard<'_>, &VmaRef, usize, usize) -> Result,
    ) -> Result {
        let mut addr = start;
        let mut unmapped = false;
        while addr < end {
            {
                let guard = mm.mmap_read_lock_killable()?;
                let mut budget = BATCH_PAGES;
                while addr < end && budget > 0 {
                    let Some(vma) = guard.find_vma(addr).filter(|vma| vma.start() < end) else {
                        unmapped = true;
                        addr = end;
                        break;
                    };
                    if vma.start() > addr {
                        unmapped = true;
                        addr = vma.start();
                    }
                    let stop = vma.end().min(end).min(addr + budget * PAGE_SIZE);
                    visit(&guard, vma, addr, stop)?;
                    budget -= (stop - addr) / PAGE_SIZE;
                    addr = stop;
                }
            }
            task::cond_resched();
            if task::fatal_signal_pending() {
                return Err(EINTR);
            }
        }
        if unmapped {
            Err(ENOMEM)
        } else {
            Ok(())
        }
    }

    fn merge_range(&self, mm: &MmWithUser, start: usize, end: usize) -> Result {
        STATS.madvise_calls.inc();
        if !enabled(&TUNABLES.run) {
            return Ok(());
        }
        let call = Call::new(mm, self.domain_of(mm)?, Stage::Walk, false);
        let walked = self.walk(mm, start, end, |guard, vma, from, to| {
            let pages = ((to - from) / PAGE_SIZE) as u64;
            let Some(vma) = MergeableVma::from_vma(vma) else {
                STATS.skip(Skip::Vma, pages);
                return Ok(());
            };
            STATS.pages_scanned.add(pages);
            for addr in (from..to).step_by(PAGE_SIZE) {
                // With both vCPUs merging, a woken task waits for this: not for a whole batch.
                task::cond_resched();
                if let Err(e) = call.record(addr, self.decide(&call, guard, vma, addr)) {
                    // Interrupted: the pages after it were counted as scanned, and are left.
                    STATS.skip(Skip::Busy, ((to - addr) / PAGE_SIZE - 1) as u64);
                    return Err(e);
                }
            }
            Ok(())
        });
        if walked == Err(EINTR) {
            call.abandon(0);
            return walked;
        }
        self.finish(&call)?;
        walked
    }

    fn unmerge_range(&self, mm: &MmWithUser, start: usize, end: usize) -> Result {
        STATS.unmerge_calls.inc();
        // Every VMA, not only mergeable ones: a VMA may have changed (mprotect, userfaultfd
        // registration...) since its pages were merged; the primitive skips what cannot hold any.
        self.walk(mm, start, end, |_, vma, from, to| {
            self.index.forget_range(mm, from, to)?;
            upm::unmerge_range(vma, from, to)
        })
    }

    /// Drops stale entries and frees dead stable nodes; returns the delay until the next sweep.
    /// A pass over a large index takes several runs, each of bounded work, close together.
    pub(crate) fn sweep(&self) -> u32 {
        let (freed, pass_done) = self.index.sweep();
        STATS.stable_pages_freed.add(freed);
        if !pass_done {
            return SWEEP_CONTINUE_MS;
        }
        upm::prune_stable_nodes();
        STATS.sweep_passes.inc();
        TUNABLES
            .sweep_millisecs
            .load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl AdviseHandler for Upm {
    fn advise(&self, mm: &MmWithUser, start: usize, end: usize, advice: i32) -> Result {
        match advice {
            upm::MADV_UPM_MERGEABLE => self.merge_range(mm, start, end),
            upm::MADV_UPM_UNMERGEABLE => self.unmerge_range(mm, start, end),
            _ => Err(EINVAL),
        }
    }
}

impl PeriodicHandler for Upm {
    fn run(&self) -> u32 {
        self.sweep()
    }
}
