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
//! A twin whose mm is busy cannot be paired with at once (an adviser only trylocks another
//! mm's `mmap_lock`): the page is retried at the end of the call, and a pairing that still
//! fails is made from the twin's side, holding only the twin's lock. What fails even then is
//! counted in `pages_skipped_busy`: no page with a twin is left apart uncounted.
//!
//! `mmap_lock` is taken for reading in batches of [`BATCH_PAGES`]: between batches the walk
//! drops it, reschedules and checks for a fatal signal, so a long call neither starves writers
//! of the mm nor outlives a kill. Unmapped parts of the range make the call fail with `ENOMEM`
//! after the mapped parts were processed, as madvise(2) specifies.

use crate::{
    ffi::{
        self,
        mm::{virt::VmaRef, Mm, MmWithUser, MmapReadGuard},
        page::{UserPage, PAGE_SIZE},
        task,
        upm_ops::{self, AdviseHandler, Mapped, MergeError, MergeableVma, UpmNode},
        workqueue::PeriodicHandler,
    },
    groups::Groups,
    stats::{enabled, Skip, STATS, TUNABLES},
    tree::{mm_id, ContentIndex, Index, Key, Probe, MAX_PROBES},
};
use core::cell::Cell;
use kernel::{prelude::*, types::ARef};

/// Pages handled per hold of `mmap_lock`.
const BATCH_PAGES: usize = 512;

/// Pages per call whose pairing is retried at its end because the twin's mm was busy.
const MAX_DEFERRED: usize = 4096;

/// Of those, pages found not present (a huge page being split by another adviser has its
/// pages replaced by migration entries for the while) looked at again at the end of the call.
const MAX_ABSENT_DEFERRED: usize = 1024;

/// Attempts at pairing a candidate from its side before it is counted as left apart.
const TWIN_ATTEMPTS: usize = 3;

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
    seed: u64,
    /// Hash of an all-zero page with `seed`.
    zero_hash: u64,
}

/// How far a call is, which decides what happens to a page whose twin's mm is busy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The walk of the range: the page is deferred to the end of the call.
    Walk,
    /// The retry of the deferred pages: the pairing is handed to the twin's side.
    Retry,
    /// Pairing from the twins' side, the last attempt: what still fails is counted.
    Twins,
}

/// One MADV_UPM_MERGEABLE call.
struct Call<'a> {
    /// The advised address space.
    mm: &'a MmWithUser,
    /// Its merge domain (see [`Upm::domain_of`]).
    domain: u64,
    stage: Cell<Stage>,
    /// Whether this call flushed every CPU's LRU batches already.
    drained: Cell<bool>,
    /// Pages whose twin's mm was busy, or not present, to try again at the end of the call.
    deferred: Cell<KVec<usize>>,
    /// How many of them were not present.
    absent_deferred: Cell<usize>,
    /// The last mm found busy: the end of the call waits for its `mmap_lock`.
    busy_twin: Cell<Option<ARef<Mm>>>,
    /// Candidates of other mms that could not be paired because their mm was busy: the end of
    /// the call pairs them from their own side, holding only their `mmap_lock`.
    busy_candidates: Cell<KVec<(ARef<Mm>, usize)>>,
}

impl<'a> Call<'a> {
    fn new(mm: &'a MmWithUser, domain: u64, stage: Stage, drained: bool) -> Self {
        Self {
            mm,
            domain,
            stage: Cell::new(stage),
            drained: Cell::new(drained),
            deferred: Cell::new(KVec::new()),
            absent_deferred: Cell::new(0),
            busy_twin: Cell::new(None),
            busy_candidates: Cell::new(KVec::new()),
        }
    }

    /// Defers `addr` to the end of the call (in the walk) or to the next attempt from the
    /// candidate's side (see [`Upm::pair_from_candidate`]); false if it must be counted now.
    fn defer(&self, addr: usize) -> bool {
        if self.stage.get() == Stage::Retry {
            return false;
        }
        // Cells, not RefCells: nothing here can panic on a borrow.
        let mut deferred = self.deferred.take();
        let deferred_now = deferred.len() < MAX_DEFERRED && deferred.push(addr, GFP_KERNEL).is_ok();
        self.deferred.set(deferred);
        deferred_now
    }

    /// Hands the pairing with the candidate of `mm` at `addr` to the end of the call, where
    /// [`Upm::pair_from_candidate`] makes it; false if it must be counted now.
    fn hand_to_candidate(&self, mm: &ARef<Mm>, addr: usize) -> bool {
        if self.stage.get() == Stage::Twins {
            return false;
        }
        let mut busy = self.busy_candidates.take();
        let handed = busy.len() < MAX_DEFERRED && busy.push((mm.clone(), addr), GFP_KERNEL).is_ok();
        self.busy_candidates.set(busy);
        handed
    }
}

/// How one attempt at pairing a candidate from its side ended.
enum TwinAttempt {
    /// Paired, counted, or no longer a candidate.
    Done,
    /// A page or an mm was busy: worth another attempt.
    Busy,
    /// The candidate's page is not present (migrating or swapped out).
    NotPresent,
}

/// What trying one twin from the index came to.
enum Tried {
    /// The advised page is merged, into this node.
    Merged(ARef<UpmNode>),
    /// The twin was stale and left the index: it cost no try.
    Dropped,
    /// Not merged with this twin (it differs, is full, or is the page itself).
    Kept,
    /// The twin's mm was busy: it is paired from its side later.
    TwinBusy,
    /// The twin's mm was busy: it was handed to the call, which pairs it from its side.
    HandedToTwin,
}

/// The page being advised and where it is mapped.
struct Advised<'a> {
    vma: &'a MergeableVma,
    page: &'a UserPage,
    addr: usize,
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

    /// The merge domain of `mm` under the current policy (see [`crate::stats::domain_of`]).
    ///
    /// # Errors
    ///
    /// `ESRCH` if the mm has no owner any more (it is exiting).
    pub(crate) fn domain_of(&self, mm: &MmWithUser) -> Result<u64> {
        crate::stats::domain_of(mm, &self.groups)
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
                self.merge_one(&call, guard, vma, addr);
            }
            Ok(())
        });
        if walked == Err(EINTR) {
            let left = call.deferred.take().len() + call.busy_candidates.take().len();
            STATS.skip(Skip::Busy, left as u64);
            return walked;
        }
        self.retry_deferred(&call)?;
        self.pair_busy_candidates(&call)?;
        walked
    }

    /// Tries the deferred pages once more. A candidate's mm is only ever trylocked while our
    /// own `mmap_lock` is held, and is busy while its owner holds it and a writer (mmap,
    /// khugepaged) waits; so first wait for that lock holding none of ours, then retry.
    fn retry_deferred(&self, call: &Call<'_>) -> Result {
        let deferred = call.deferred.take();
        if deferred.is_empty() {
            return Ok(());
        }
        call.stage.set(Stage::Retry);
        let interrupted = || {
            let left = deferred.len() + call.busy_candidates.take().len();
            STATS.skip(Skip::Busy, left as u64);
            EINTR
        };
        if let Some(twin) = call.busy_twin.take() {
            wait_for_mmap_lock(&twin).map_err(|_| interrupted())?;
        }
        let guard = call
            .mm
            .mmap_read_lock_killable()
            .map_err(|_| interrupted())?;
        for addr in deferred {
            match guard.vma_lookup(addr).and_then(MergeableVma::from_vma) {
                Some(vma) => self.merge_one(call, &guard, vma, addr),
                None => STATS.skip(Skip::Other, 1),
            }
        }
        Ok(())
    }

    /// Pairs the candidates that the call met while their mm was busy, each from its own side:
    /// holding only that mm's `mmap_lock`, which it may wait for, the candidate is advised
    /// again and finds its twin (the caller's page, merged or a candidate) in the index.
    fn pair_busy_candidates(&self, call: &Call<'_>) -> Result {
        let mut busy = call.busy_candidates.take();
        call.stage.set(Stage::Twins);
        // A candidate may have been met busy by several pages of the call: pair it once.
        let key = |(mm, addr): &(ARef<Mm>, usize)| (mm_id(mm), *addr);
        busy.sort_unstable_by_key(key);
        for (i, candidate) in busy.iter().enumerate() {
            if i > 0 && key(&busy[i - 1]) == key(candidate) {
                continue;
            }
            if let Err(e) = self.pair_from_candidate(call, &candidate.0, candidate.1) {
                // Interrupted: the candidates left stay apart, each counted once.
                let left = &busy[i..];
                let distinct = 1 + left.windows(2).filter(|w| key(&w[0]) != key(&w[1])).count();
                STATS.skip(Skip::Busy, distinct as u64);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Advises the candidate of `mm` at `addr` again, for `call`, if it is still a candidate
    /// of the call's domain. A pairing that fails because a page is moving or the other mm is
    /// busy is attempted [`TWIN_ATTEMPTS`] times, waiting for that mm's `mmap_lock` in between.
    fn pair_from_candidate(&self, call: &Call<'_>, mm: &Mm, addr: usize) -> Result {
        let Some(user) = mm.mmget_not_zero() else {
            return Ok(());
        };
        let user = MmWithUser::into_mmput_async(user);
        if self.domain_of(&user) != Ok(call.domain) {
            return Ok(());
        }
        for attempt in 1..=TWIN_ATTEMPTS {
            let twin_call = Call::new(&user, call.domain, Stage::Twins, call.drained.get());
            let outcome = self.pair_candidate_once(&twin_call, addr);
            call.drained.set(twin_call.drained.get());
            let left_by = match outcome? {
                TwinAttempt::Done => return Ok(()),
                TwinAttempt::Busy => Skip::Busy,
                TwinAttempt::NotPresent => Skip::NotPresent,
            };
            if attempt == TWIN_ATTEMPTS {
                STATS.skip(left_by, 1);
                return Ok(());
            }
            // Holding no `mmap_lock`: a page that was moving has moved by then.
            if let Some(busy) = twin_call.busy_twin.take() {
                wait_for_mmap_lock(&busy)?;
            }
            task::cond_resched();
        }
        Ok(())
    }

    /// One attempt of [`Self::pair_from_candidate`], holding only the candidate's `mmap_lock`.
    fn pair_candidate_once(&self, twin_call: &Call<'_>, addr: usize) -> Result<TwinAttempt> {
        // The caller holds no `mmap_lock` now: waiting for this one cannot deadlock.
        let guard = twin_call.mm.mmap_read_lock_killable()?;
        if !self.index.has_candidate(twin_call.mm, addr) {
            // Paired, unmerged or replaced meanwhile.
            return Ok(TwinAttempt::Done);
        }
        let Some(vma) = guard.vma_lookup(addr).and_then(MergeableVma::from_vma) else {
            return Ok(TwinAttempt::Done);
        };
        // Counted only if it is still an ordinary page: it was counted when it was advised.
        match vma.get_page(addr) {
            Mapped::Anon(page) => self.merge_present(twin_call, &guard, vma, addr, page, false),
            Mapped::Large(page) if enabled(&TUNABLES.split_thp) => {
                self.merge_present(twin_call, &guard, vma, addr, page, true)
            }
            // Migrating or swapped out.
            Mapped::Nothing => return Ok(TwinAttempt::NotPresent),
            _ => {}
        }
        // Deferred (not counted) by merge_present() only if it failed because something was busy.
        Ok(if twin_call.deferred.take().is_empty() {
            TwinAttempt::Done
        } else {
            TwinAttempt::Busy
        })
    }

    fn unmerge_range(&self, mm: &MmWithUser, start: usize, end: usize) -> Result {
        STATS.unmerge_calls.inc();
        // Every VMA, not only mergeable ones: a VMA may have changed (mprotect, userfaultfd
        // registration...) since its pages were merged; the primitive skips what cannot hold any.
        self.walk(mm, start, end, |_, vma, from, to| {
            self.index.forget_range(mm, from, to);
            upm_ops::unmerge_range(vma, from, to)
        })
    }

    /// Merges the page at `addr`, or records it as a candidate; counts the outcome.
    fn merge_one(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        vma: &MergeableVma,
        addr: usize,
    ) {
        let (page, large) = match vma.get_page(addr) {
            Mapped::Anon(page) => (page, false),
            Mapped::Large(page) => {
                if !enabled(&TUNABLES.split_thp) {
                    return STATS.skip(Skip::Large, 1);
                }
                (page, true)
            }
            Mapped::Nothing => {
                // Migrating (another adviser may be splitting its huge page right now) or
                // swapped out: look again at the end of the call.
                let absent = call.absent_deferred.get();
                if absent < MAX_ABSENT_DEFERRED && call.defer(addr) {
                    call.absent_deferred.set(absent + 1);
                } else {
                    STATS.skip(Skip::NotPresent, 1);
                }
                return;
            }
            Mapped::Ksm(node) => {
                if let Some(node) = node {
                    self.adopt(call.domain, &node);
                }
                return STATS.pages_already_merged.inc();
            }
            Mapped::Zero => return STATS.pages_already_merged.inc(),
            Mapped::Other => return STATS.skip(Skip::Other, 1),
        };
        self.merge_present(call, guard, vma, addr, page, large);
    }

    /// Merges the ordinary page `page` mapped at `addr`, or records it as a candidate; counts
    /// the outcome.
    fn merge_present(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        vma: &MergeableVma,
        addr: usize,
        page: ARef<UserPage>,
        large: bool,
    ) {
        let mut result = self.merge_page(call, guard, vma, addr, page, large);
        if result == Err(MergeError::Batched) && !call.drained.replace(true) {
            // A per-CPU LRU batch may hold the page: flush them all, once per call, and retry.
            upm_ops::drain_lru();
            result = match vma.get_page(addr) {
                Mapped::Anon(page) => self.merge_page(call, guard, vma, addr, page, false),
                _ => Err(MergeError::Gone),
            };
        }
        if let Err(e) = result {
            if e == MergeError::Busy && call.defer(addr) {
                // Counted when it is retried: at the end of the call, or by the next attempt
                // from the candidate's side.
                return;
            }
            STATS.skip(skip_reason(e), 1);
        }
    }

    /// Indexes a merged page that the index does not know (merged before a reload), if it was
    /// merged in the caller's domain: a page of another domain is never offered as a twin.
    fn adopt(&self, domain: u64, node: &ARef<UpmNode>) {
        if node.domain() != domain {
            return;
        }
        let Ok(hash) = node.content_hash(self.seed) else {
            return;
        };
        let mut index = self.index.lock(domain, hash);
        if !index.has_node(node) {
            // Without an entry the page stays merged, only not offered as a twin.
            let _ = index.insert_merged(node.clone());
        }
    }

    /// Zero page, else a twin from the index, else a new candidate.
    fn merge_page(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        vma: &MergeableVma,
        addr: usize,
        page: ARef<UserPage>,
        large: bool,
    ) -> Result<(), MergeError> {
        let (mm, domain) = (call.mm, call.domain);
        let hash = page.content_hash(self.seed);
        // No page reference while waiting for the index: an adviser holding it may be pairing
        // with this very page (a candidate since an earlier advice) or splitting the huge page
        // it belongs to, and an unexplained reference makes either fail.
        drop(page);
        self.index.forget_changed_candidate(mm, addr, domain, hash);
        let mut index = self.index.lock(domain, hash);
        let mut probes = index.probe(0, MAX_PROBES);
        if hash != self.zero_hash && probes.is_empty() {
            // No twin: a candidate, left as it is (a huge page whole).
            return index
                .insert_candidate(mm, addr)
                .map_err(|_| MergeError::NoMemory);
        }
        if large {
            // KSM's rule: split a huge page only when one of its pages has a twin.
            vma.split_large_page(addr).map_err(|_| MergeError::Busy)?;
        }
        let page = match vma.get_page(addr) {
            Mapped::Anon(page) => page,
            // Merged by another adviser while this one waited for the index.
            Mapped::Ksm(_) | Mapped::Zero => {
                STATS.pages_already_merged.inc();
                return Ok(());
            }
            _ => return Err(MergeError::Gone),
        };
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
        let advised = Advised {
            vma,
            page: &page,
            addr,
        };
        let (mut twin_busy, mut handed_to_twin) = (false, false);
        // Tries left: an entry found stale is dropped and costs none (each is dropped once).
        let (mut tries, mut wanted) = (MAX_PROBES, MAX_PROBES);
        loop {
            for (i, (key, probe)) in probes.iter().enumerate() {
                match self.try_twin(call, guard, &mut index, &advised, key, probe)? {
                    Tried::Merged(node) => {
                        index.forget_candidate(mm, addr);
                        STATS.pages_merged.inc();
                        self.absorb(&mut index, call, guard, &probes[i + 1..], &node, addr);
                        return Ok(());
                    }
                    Tried::Dropped => continue,
                    Tried::Kept => {}
                    Tried::TwinBusy => twin_busy = true,
                    Tried::HandedToTwin => handed_to_twin = true,
                }
                tries -= 1;
            }
            // Entries dropped on the way gave their tries back: look further, behind the last.
            match probes.last() {
                Some((last, _)) if tries > 0 && probes.len() == wanted => {
                    let from = last.2 + 1;
                    wanted = tries;
                    probes = index.probe(from, wanted);
                }
                _ => break,
            }
        }
        index
            .insert_candidate(mm, addr)
            .map_err(|_| MergeError::NoMemory)?;
        if twin_busy && !handed_to_twin {
            // Not merged in this call, only because its twin was busy: say so.
            return Err(MergeError::Busy);
        }
        // Merged or counted when the twin is paired from its side.
        Ok(())
    }

    /// Tries to merge the advised page with the twin `probe`, found in the index at `key`.
    fn try_twin(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        index: &mut Index<'_>,
        advised: &Advised<'_>,
        key: &Key,
        probe: &Probe,
    ) -> Result<Tried, MergeError> {
        let Advised { vma, page, addr } = *advised;
        let (twin_mm, twin_addr) = match probe {
            Probe::Merged(node) => {
                return match vma.merge_into(page, node) {
                    Ok(()) => Ok(Tried::Merged(node.clone())),
                    Err(MergeError::Differ) => {
                        STATS.hash_collisions.inc();
                        Ok(Tried::Kept)
                    }
                    Err(MergeError::NodeGone) => {
                        drop(index.remove(key));
                        STATS.stable_pages_freed.inc();
                        Ok(Tried::Dropped)
                    }
                    // Kept for its sharers' counts, but probed last from now on: this page
                    // becomes a candidate and the next twin starts a new node with it, as KSM's
                    // chains do.
                    Err(MergeError::NodeFull) => {
                        index.move_to_back(key);
                        Ok(Tried::Kept)
                    }
                    Err(e) => Err(e),
                };
            }
            Probe::Candidate(twin_mm, twin_addr) => (twin_mm, *twin_addr),
        };
        if mm_id(twin_mm) == mm_id(call.mm) && twin_addr == addr {
            // This very page, advised again.
            return Ok(Tried::Kept);
        }
        let pair = self.with_candidate(call, guard, twin_mm, twin_addr, |twin_vma, twin| {
            // The candidate, advised first, keeps its frame: the new page is the one replaced.
            let fresh_frame = enabled(&TUNABLES.fresh_frame);
            twin_vma.merge_pair(twin, vma, page, call.domain, fresh_frame)
        });
        match pair {
            Ok(node) => {
                // The pair is merged whether or not the index can keep the node.
                if let Err(node) = index.promote(key, node.clone()) {
                    let _ = index.insert_merged(node);
                }
                STATS.pages_promoted.inc();
                Ok(Tried::Merged(node))
            }
            Err(PairError::Busy) => {
                if call.stage.get() == Stage::Retry && call.hand_to_candidate(twin_mm, twin_addr) {
                    Ok(Tried::HandedToTwin)
                } else {
                    call.busy_twin.set(Some(twin_mm.clone()));
                    Ok(Tried::TwinBusy)
                }
            }
            Err(PairError::Stale) => {
                drop(index.remove(key));
                Ok(Tried::Dropped)
            }
            Err(PairError::Page(MergeError::Differ)) => {
                // One of the two changed since it was hashed.
                STATS.hash_collisions.inc();
                drop(index.remove(key));
                Ok(Tried::Dropped)
            }
            Err(PairError::Page(e)) => Err(e),
        }
    }

    /// Merges the other candidates of the same contents into `node`, the page just merged: a
    /// candidate whose twin was busy when it was advised is not left behind, nor one whose own
    /// mm is busy now (it is paired from its side at the end of the call).
    fn absorb(
        &self,
        index: &mut Index<'_>,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        rest: &[(Key, Probe)],
        node: &UpmNode,
        addr: usize,
    ) {
        for (key, probe) in rest {
            let Probe::Candidate(twin_mm, twin_addr) = probe else {
                continue;
            };
            if mm_id(twin_mm) == mm_id(call.mm) && *twin_addr == addr {
                continue;
            }
            let merged = self.with_candidate(call, guard, twin_mm, *twin_addr, |twin_vma, twin| {
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
                // Every other candidate stays one, to start the next node.
                Err(PairError::Page(MergeError::NodeFull)) => break,
                Err(PairError::Busy) => {
                    if !call.hand_to_candidate(twin_mm, *twin_addr) {
                        STATS.skip(Skip::Busy, 1);
                    }
                }
                Err(PairError::Page(e)) => STATS.skip(skip_reason(e), 1),
            }
        }
    }

    /// Calls `merge` with the candidate page of `twin_mm` at `twin_addr` and its VMA, locked,
    /// if the candidate is still in the caller's domain.
    fn with_candidate<T>(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        twin_mm: &Mm,
        twin_addr: usize,
        merge: impl FnOnce(&MergeableVma, &UserPage) -> Result<T, MergeError>,
    ) -> Result<T, PairError> {
        if mm_id(twin_mm) == mm_id(call.mm) {
            let twin_vma = guard.vma_lookup(twin_addr).ok_or(PairError::Stale)?;
            return Self::with_candidate_page(twin_vma, twin_addr, merge);
        }
        // Dropped with mmput_async(): never tear an address space down under the index lock.
        let user = MmWithUser::into_mmput_async(twin_mm.mmget_not_zero().ok_or(PairError::Stale)?);
        // The candidate's process may have changed domain (setuid, a cgroup move) since it
        // advised the page: pair only if it still shares the caller's.
        if self.domain_of(&user) != Ok(call.domain) {
            return Err(PairError::Stale);
        }
        // Never wait for another process's mmap_lock while holding ours: trylock it.
        let twin_guard = user.mmap_read_trylock().ok_or(PairError::Busy)?;
        let twin_vma = twin_guard.vma_lookup(twin_addr).ok_or(PairError::Stale)?;
        Self::with_candidate_page(twin_vma, twin_addr, merge)
    }

    fn with_candidate_page<T>(
        twin_vma: &VmaRef,
        twin_addr: usize,
        merge: impl FnOnce(&MergeableVma, &UserPage) -> Result<T, MergeError>,
    ) -> Result<T, PairError> {
        let twin_vma = MergeableVma::from_vma(twin_vma).ok_or(PairError::Stale)?;
        let mut twin = twin_vma.get_page(twin_addr);
        if matches!(twin, Mapped::Large(_)) {
            drop(twin);
            twin_vma
                .split_large_page(twin_addr)
                .map_err(|_| PairError::Busy)?;
            twin = twin_vma.get_page(twin_addr);
        }
        let twin = match twin {
            Mapped::Anon(twin) => twin,
            // Migrating (NUMA balancing, compaction) or swapped out: it comes back, so the
            // candidate is kept and the pairing retried like one with a busy mm.
            Mapped::Nothing => return Err(PairError::Busy),
            _ => return Err(PairError::Stale),
        };
        merge(twin_vma, &twin).map_err(|e| match e {
            // Unmapped since it was looked up: moved a moment ago, as above.
            MergeError::Busy | MergeError::Gone => PairError::Busy,
            e => PairError::Page(e),
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
        upm_ops::prune_stable_nodes();
        STATS.sweep_passes.inc();
        TUNABLES
            .sweep_millisecs
            .load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// Waits until `mm`'s `mmap_lock` can be taken for reading (killably), holding none.
fn wait_for_mmap_lock(mm: &Mm) -> Result {
    if let Some(user) = mm.mmget_not_zero() {
        let user = MmWithUser::into_mmput_async(user);
        drop(user.mmap_read_lock_killable()?);
    }
    Ok(())
}

/// The counter of a page left unmerged by `e`.
fn skip_reason(e: MergeError) -> Skip {
    match e {
        MergeError::Pinned | MergeError::Batched => Skip::Pinned,
        MergeError::Busy => Skip::Busy,
        MergeError::Differ
        | MergeError::Gone
        | MergeError::NodeGone
        | MergeError::NodeFull
        | MergeError::NoMemory => Skip::Other,
    }
}

impl AdviseHandler for Upm {
    fn advise(&self, mm: &MmWithUser, start: usize, end: usize, advice: i32) -> Result {
        match advice {
            upm_ops::MADV_UPM_MERGEABLE => self.merge_range(mm, start, end),
            upm_ops::MADV_UPM_UNMERGEABLE => self.unmerge_range(mm, start, end),
            _ => Err(EINVAL),
        }
    }
}

impl PeriodicHandler for Upm {
    fn run(&self) -> u32 {
        self.sweep()
    }
}
