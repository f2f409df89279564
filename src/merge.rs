// SPDX-License-Identifier: GPL-2.0

//! The walk of one advised range.
//!
//! MADV_UPM_MERGEABLE looks at every page of the range that is present and, for an anonymous
//! page in a VMA that KSM's rules allow, replaces it by the zero page (all-zero contents), merges
//! it with an identical merged page or candidate found through the content-hash index, or else
//! records it as a candidate, leaving it an ordinary page. Everything else is skipped and
//! counted, never an error, as KSM does.
//! MADV_UPM_UNMERGEABLE gives every merged page in the range a private copy again.
//!
//! `mmap_lock` is taken for reading in batches of [`BATCH_PAGES`]: between batches the walk
//! drops it, reschedules and checks for a fatal signal, so a long call neither starves writers
//! of the mm nor outlives a kill. Unmapped parts of the range make the call fail with `ENOMEM`
//! after the mapped parts were processed, as madvise(2) specifies.

use crate::{
    ffi::{
        self, AdviseHandler, CallMm, Mapped, MergeError, Mm, MmapReadGuard, PageRef, UpmNode, Vma,
        PAGE_SIZE,
    },
    stats::{enabled, Skip, STATS, TUNABLES},
    tree::{ContentIndex, Index, Key, Probe},
};
use kernel::{prelude::*, types::ARef};

/// Pages handled per hold of `mmap_lock`.
const BATCH_PAGES: usize = 512;

/// The module's state: the content-hash index and what it needs to classify pages.
#[pin_data]
pub(crate) struct Upm {
    #[pin]
    pub(crate) index: ContentIndex,
    /// Secret seed of the content hash, chosen at load: nobody can craft pages that collide.
    seed: u64,
    /// Hash of an all-zero page with `seed`.
    zero_hash: u64,
}

/// Why a candidate could not be paired with.
enum PairError {
    /// The candidate is stale: drop it.
    Stale,
    /// Try again later (its mm is being written to, or a page lock is contended).
    Busy,
    /// The page being advised cannot merge (pinned, gone...).
    Page(MergeError),
}

impl Upm {
    /// New state with an empty index.
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let zeroes = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
        let seed = ffi::random_u64();
        let zero_hash = ffi::xxh64(&zeroes, seed);
        Ok(pin_init!(Self {
            index <- ContentIndex::new(),
            seed,
            zero_hash,
        }))
    }

    /// Calls `visit` on each part of `start..end` covered by a VMA, with `mmap_lock` held.
    fn walk(
        &self,
        mm: &CallMm<'_>,
        start: usize,
        end: usize,
        mut visit: impl FnMut(&MmapReadGuard<'_>, &Vma<'_>, usize, usize) -> Result,
    ) -> Result {
        let mut addr = start;
        let mut unmapped = false;
        while addr < end {
            {
                let guard = mm.mmap_read_lock()?;
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
                    visit(&guard, &vma, addr, stop)?;
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

    fn merge_range(&self, mm: &CallMm<'_>, start: usize, end: usize) -> Result {
        STATS.madvise_calls.inc();
        if !enabled(&TUNABLES.run) {
            return Ok(());
        }
        self.walk(mm, start, end, |guard, vma, from, to| {
            let pages = ((to - from) / PAGE_SIZE) as u64;
            if !vma.is_mergeable() {
                STATS.skip(Skip::Vma, pages);
                return Ok(());
            }
            STATS.pages_scanned.add(pages);
            for addr in (from..to).step_by(PAGE_SIZE) {
                self.merge_one(mm.mm(), guard, vma, addr);
            }
            Ok(())
        })
    }

    fn unmerge_range(&self, mm: &CallMm<'_>, start: usize, end: usize) -> Result {
        STATS.unmerge_calls.inc();
        // Every VMA, not only mergeable ones: a VMA may have changed (mprotect, userfaultfd
        // registration...) since its pages were merged; the primitive skips what cannot hold any.
        self.walk(mm, start, end, |_, vma, from, to| {
            let mut index = self.index.lock();
            for addr in (from..to).step_by(PAGE_SIZE) {
                index.forget_candidate(mm.mm(), addr);
            }
            drop(index);
            vma.unmerge(from, to)
        })
    }

    /// Merges the page at `addr`, or records it as a candidate; counts the outcome.
    fn merge_one(&self, mm: &Mm, guard: &MmapReadGuard<'_>, vma: &Vma<'_>, addr: usize) {
        let (page, large) = match vma.get_page(addr) {
            Mapped::Anon(page) => (page, false),
            Mapped::Large(page) => {
                if !enabled(&TUNABLES.split_thp) {
                    return STATS.skip(Skip::Large, 1);
                }
                (page, true)
            }
            Mapped::Nothing => return STATS.skip(Skip::NotPresent, 1),
            Mapped::Ksm(node) => {
                if let Some(node) = node {
                    self.adopt(&node);
                }
                return STATS.pages_already_merged.inc();
            }
            Mapped::Zero => return STATS.pages_already_merged.inc(),
            Mapped::Other => return STATS.skip(Skip::Other, 1),
        };
        if let Err(e) = self.merge_page(mm, guard, vma, addr, page, large) {
            STATS.skip(
                match e {
                    MergeError::Pinned => Skip::Pinned,
                    MergeError::Busy => Skip::Busy,
                    MergeError::Differ
                    | MergeError::Gone
                    | MergeError::NodeGone
                    | MergeError::NoMemory => Skip::Other,
                },
                1,
            );
        }
    }

    /// Indexes a merged page that the index does not know (merged before a reload).
    fn adopt(&self, node: &ARef<UpmNode>) {
        let Ok(hash) = node.content_hash(self.seed) else {
            return;
        };
        let mut index = self.index.lock();
        if !index.has_node(hash, node) {
            // Without an entry the page stays merged, only not offered as a twin.
            let _ = index.insert_merged(hash, node.clone());
        }
    }

    /// Zero page, else a twin from the index, else a new candidate.
    fn merge_page(
        &self,
        mm: &Mm,
        guard: &MmapReadGuard<'_>,
        vma: &Vma<'_>,
        addr: usize,
        mut page: PageRef,
        large: bool,
    ) -> Result<(), MergeError> {
        let hash = page.content_hash(self.seed);
        let mut index = self.index.lock();
        let probes = index.probe(hash);
        if large && (hash == self.zero_hash || !probes.is_empty()) {
            // KSM's rule: split a huge page only when one of its pages has a twin.
            drop(page);
            vma.split_large_page(addr).map_err(|_| MergeError::Busy)?;
            page = match vma.get_page(addr) {
                Mapped::Anon(page) => page,
                _ => return Err(MergeError::Gone),
            };
        } else if large {
            // No twin: a candidate, left whole.
            return index
                .insert_candidate(hash, mm, addr)
                .map_err(|_| MergeError::NoMemory);
        }
        if hash == self.zero_hash && enabled(&TUNABLES.use_zero_pages) {
            match vma.merge_zero(&page, addr) {
                Ok(()) => {
                    index.forget_candidate(mm, addr);
                    STATS.pages_zero_merged.inc();
                    return Ok(());
                }
                // Hashes like zeroes but is not: treat it as any other page.
                Err(MergeError::Differ) => STATS.hash_collisions.inc(),
                Err(e) => return Err(e),
            }
        }
        let mut twin_busy = false;
        for (i, (key, probe)) in probes.iter().enumerate() {
            let node = match probe {
                Probe::Merged(node) => match vma.merge_into(&page, node) {
                    Ok(()) => node.clone(),
                    Err(MergeError::Differ) => {
                        STATS.hash_collisions.inc();
                        continue;
                    }
                    Err(MergeError::NodeGone) => {
                        drop(index.remove(key));
                        STATS.stable_pages_freed.inc();
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Probe::Candidate(twin_mm, twin_addr) => {
                    if twin_mm.id() == mm.id() && *twin_addr == addr {
                        // This very page, advised again.
                        continue;
                    }
                    let pair = self.with_candidate(guard, twin_mm, *twin_addr, |twin_vma, twin| {
                        // The candidate, advised first, keeps its frame: the new page is the
                        // one replaced.
                        twin_vma.merge_pair(twin, vma, &page)
                    });
                    match pair {
                        Ok(node) => {
                            drop(index.remove(key));
                            // The pair is merged whether or not the index can keep the node.
                            let _ = index.insert_merged(hash, node.clone());
                            STATS.pages_promoted.inc();
                            node
                        }
                        Err(PairError::Busy) => {
                            twin_busy = true;
                            continue;
                        }
                        Err(PairError::Stale) => {
                            drop(index.remove(key));
                            continue;
                        }
                        Err(PairError::Page(MergeError::Differ)) => {
                            // One of the two changed since it was hashed.
                            STATS.hash_collisions.inc();
                            drop(index.remove(key));
                            continue;
                        }
                        Err(PairError::Page(e)) => return Err(e),
                    }
                }
            };
            index.forget_candidate(mm, addr);
            STATS.pages_merged.inc();
            self.absorb(&mut index, guard, &probes[i + 1..], &node, mm, addr);
            return Ok(());
        }
        index
            .insert_candidate(hash, mm, addr)
            .map_err(|_| MergeError::NoMemory)?;
        if twin_busy {
            // Not merged in this call, only because its twin was busy: say so.
            return Err(MergeError::Busy);
        }
        Ok(())
    }

    /// Merges the other candidates of the same contents into `node`, the page just merged: a
    /// candidate whose twin was busy when it was advised is not left behind.
    fn absorb(
        &self,
        index: &mut Index,
        guard: &MmapReadGuard<'_>,
        rest: &[(Key, Probe)],
        node: &UpmNode,
        mm: &Mm,
        addr: usize,
    ) {
        for (key, probe) in rest {
            let Probe::Candidate(twin_mm, twin_addr) = probe else {
                continue;
            };
            if twin_mm.id() == mm.id() && *twin_addr == addr {
                continue;
            }
            let merged = self.with_candidate(guard, twin_mm, *twin_addr, |twin_vma, twin| {
                twin_vma.merge_into(twin, node)
            });
            match merged {
                Ok(()) => {
                    drop(index.remove(key));
                    STATS.pages_merged.inc();
                }
                Err(PairError::Stale) | Err(PairError::Page(MergeError::Differ)) => {
                    drop(index.remove(key));
                }
                Err(_) => {}
            }
        }
    }

    /// Calls `merge` with the candidate page of `twin_mm` at `twin_addr` and its VMA, locked.
    fn with_candidate<T>(
        &self,
        guard: &MmapReadGuard<'_>,
        twin_mm: &Mm,
        twin_addr: usize,
        merge: impl FnOnce(&Vma<'_>, &PageRef) -> Result<T, MergeError>,
    ) -> Result<T, PairError> {
        if twin_mm.id() == guard.mm_id() {
            let twin_vma = guard.vma_containing(twin_addr).ok_or(PairError::Stale)?;
            return Self::with_candidate_page(&twin_vma, twin_addr, merge);
        }
        // Never wait for another process's mmap_lock while holding ours: trylock it.
        let user = twin_mm.mmget_not_zero().ok_or(PairError::Stale)?;
        let twin_guard = user.mmap_read_trylock().ok_or(PairError::Busy)?;
        let twin_vma = twin_guard
            .vma_containing(twin_addr)
            .ok_or(PairError::Stale)?;
        Self::with_candidate_page(&twin_vma, twin_addr, merge)
    }

    fn with_candidate_page<T>(
        twin_vma: &Vma<'_>,
        twin_addr: usize,
        merge: impl FnOnce(&Vma<'_>, &PageRef) -> Result<T, MergeError>,
    ) -> Result<T, PairError> {
        let mut twin = twin_vma.get_page(twin_addr);
        if matches!(twin, Mapped::Large(_)) {
            drop(twin);
            twin_vma
                .split_large_page(twin_addr)
                .map_err(|_| PairError::Busy)?;
            twin = twin_vma.get_page(twin_addr);
        }
        let Mapped::Anon(twin) = twin else {
            return Err(PairError::Stale);
        };
        merge(twin_vma, &twin).map_err(|e| match e {
            MergeError::Busy => PairError::Busy,
            e => PairError::Page(e),
        })
    }

    /// Drops stale entries and frees dead stable nodes; returns the delay until the next sweep.
    pub(crate) fn sweep(&self) -> u32 {
        let freed = self.index.sweep();
        STATS.stable_pages_freed.add(freed);
        ffi::prune_stable_nodes();
        TUNABLES
            .sweep_millisecs
            .load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl AdviseHandler for Upm {
    fn advise(&self, mm: &CallMm<'_>, start: usize, end: usize, advice: i32) -> Result {
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
