// SPDX-License-Identifier: GPL-2.0

//! The walk of one advised range.
//!
//! MADV_UPM_MERGEABLE looks at every page of the range that is present and, for a small
//! anonymous page in a VMA that KSM's rules allow, replaces it by the zero page (all-zero
//! contents), by an identical stable page found through the content-hash tree, or else promotes
//! it to a new stable page. Everything else is skipped and counted, never an error, as KSM does.
//! MADV_UPM_UNMERGEABLE gives every merged page in the range a private copy again.
//!
//! `mmap_lock` is taken for reading in batches of [`BATCH_PAGES`]: between batches the walk
//! drops it, reschedules and checks for a fatal signal, so a long call neither starves writers
//! of the mm nor outlives a kill. Unmapped parts of the range make the call fail with `ENOMEM`
//! after the mapped parts were processed, as madvise(2) specifies.

use crate::{
    ffi::{self, AdviseHandler, Mapped, MergeError, Mm, PageRef, Vma, PAGE_SIZE},
    stats::{enabled, Skip, STATS, TUNABLES},
    tree::StableTree,
};
use kernel::prelude::*;

/// Pages handled per hold of `mmap_lock`.
const BATCH_PAGES: usize = 512;

/// The module's state: the stable tree and what it needs to classify pages.
#[pin_data]
pub(crate) struct Upm {
    #[pin]
    pub(crate) tree: StableTree,
    /// xxh64 of an all-zero page.
    zero_hash: u64,
}

impl Upm {
    /// New state with an empty tree.
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let zeroes = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
        let zero_hash = ffi::xxh64(&zeroes);
        Ok(pin_init!(Self {
            tree <- StableTree::new(),
            zero_hash,
        }))
    }

    /// Calls `visit` on each part of `start..end` covered by a VMA, with `mmap_lock` held.
    ///
    /// `visit` returns how many pages it handled (at most the length of the part it was given).
    fn walk(
        &self,
        mm: &Mm,
        start: usize,
        end: usize,
        mut visit: impl FnMut(&Vma<'_>, usize, usize) -> Result,
    ) -> Result {
        let mut addr = start;
        let mut unmapped = false;
        while addr < end {
            {
                let guard = mm.read_lock()?;
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
                    visit(&vma, addr, stop)?;
                    budget -= (stop - addr) / PAGE_SIZE;
                    addr = stop;
                }
            }
            ffi::cond_resched();
            if ffi::fatal_signal_pending() {
                return Err(EINTR);
            }
        }
        if unmapped {
            Err(ENOMEM)
        } else {
            Ok(())
        }
    }

    fn merge_range(&self, mm: &Mm, start: usize, end: usize) -> Result {
        STATS.madvise_calls.inc();
        if !enabled(&TUNABLES.run) {
            return Ok(());
        }
        self.walk(mm, start, end, |vma, from, to| {
            let pages = ((to - from) / PAGE_SIZE) as u64;
            if !vma.is_mergeable() {
                STATS.skip(Skip::Vma, pages);
                return Ok(());
            }
            STATS.pages_scanned.add(pages);
            for addr in (from..to).step_by(PAGE_SIZE) {
                self.merge_one(vma, addr);
            }
            Ok(())
        })
    }

    fn unmerge_range(&self, mm: &Mm, start: usize, end: usize) -> Result {
        STATS.unmerge_calls.inc();
        // Every VMA, not only mergeable ones: a VMA may have changed (mprotect, userfaultfd
        // registration...) since its pages were merged; the primitive skips what cannot hold any.
        self.walk(mm, start, end, |vma, from, to| vma.unmerge(from, to))
    }

    /// Merges the page at `addr`, if it is a small anonymous page; counts the outcome.
    fn merge_one(&self, vma: &Vma<'_>, addr: usize) {
        let mut mapped = vma.get_page(addr);
        if matches!(mapped, Mapped::Large) && enabled(&TUNABLES.split_thp) {
            // A failed split leaves the folio whole: it is counted as skipped below.
            if vma.split_large_page(addr).is_ok() {
                mapped = vma.get_page(addr);
            }
        }
        let page = match mapped {
            Mapped::Anon(page) => page,
            Mapped::Nothing => return STATS.skip(Skip::NotPresent, 1),
            Mapped::Ksm | Mapped::Zero => return STATS.pages_already_merged.inc(),
            Mapped::Large => return STATS.skip(Skip::Large, 1),
            Mapped::Other => return STATS.skip(Skip::Other, 1),
        };
        if let Err(e) = self.merge_page(vma, addr, page) {
            STATS.skip(
                match e {
                    MergeError::Pinned => Skip::Pinned,
                    MergeError::Busy => Skip::Busy,
                    MergeError::Differ | MergeError::Gone => Skip::Other,
                },
                1,
            );
        }
    }

    /// Zero page, else an identical stable page, else promotion to a new stable page.
    fn merge_page(&self, vma: &Vma<'_>, addr: usize, page: PageRef) -> Result<(), MergeError> {
        let hash = page.content_hash();
        if hash == self.zero_hash && enabled(&TUNABLES.use_zero_pages) {
            match vma.merge_zero(&page, addr) {
                Ok(()) => {
                    STATS.pages_zero_merged.inc();
                    return Ok(());
                }
                // Hashes like zeroes but is not: treat it as any other page.
                Err(MergeError::Differ) => STATS.hash_collisions.inc(),
                Err(e) => return Err(e),
            }
        }
        if self.merge_with_candidates(vma, &page, hash)? {
            return Ok(());
        }
        // No stable page has these contents: promote this one, unless a concurrent adviser
        // promoted the same contents while we looked.
        let _promotion = self.tree.lock_promotion();
        if self.merge_with_candidates(vma, &page, hash)? {
            return Ok(());
        }
        let stable = vma.promote(page)?;
        // The contents may have changed between the first hash and the write protection; now
        // they are frozen, so key the node by what the page really holds.
        let hash = stable.page().content_hash();
        // The page is a KSM page now whether or not the tree can keep it; without a node it
        // is simply not shared, and freed by core mm when unmapped.
        if self.tree.insert(hash, stable).is_ok() {
            STATS.pages_promoted.inc();
        }
        Ok(())
    }

    /// Merges `page` with the first stable page of equal contents; `Ok(false)` if none.
    fn merge_with_candidates(
        &self,
        vma: &Vma<'_>,
        page: &PageRef,
        hash: u64,
    ) -> Result<bool, MergeError> {
        let mut nth = 0;
        while let Some(stable) = self.tree.candidate(hash, nth) {
            match vma.merge(page, &stable) {
                Ok(()) => {
                    STATS.pages_merged.inc();
                    return Ok(true);
                }
                Err(MergeError::Differ) => {
                    STATS.hash_collisions.inc();
                    nth += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Frees orphaned stable pages; returns the delay until the next sweep.
    pub(crate) fn sweep(&self) -> u32 {
        let freed = self.tree.sweep();
        STATS.stable_pages_freed.add(freed as u64);
        TUNABLES
            .sweep_millisecs
            .load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl AdviseHandler for Upm {
    fn advise(&self, mm: &Mm, start: usize, end: usize, advice: i32) -> Result {
        match advice {
            ffi::MADV_UPM_MERGEABLE => self.merge_range(mm, start, end),
            ffi::MADV_UPM_UNMERGEABLE => self.unmerge_range(mm, start, end),
            _ => Err(EINVAL),
        }
    }
}

impl ffi::PeriodicHandler for Upm {
    fn run(&self) -> u32 {
        self.sweep()
    }
}
