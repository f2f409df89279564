// SPDX-License-Identifier: GPL-2.0

//! One MADV_UPM_MERGEABLE call: what became of each page, and what is tried again at its end.
//!
//! A twin whose mm is busy cannot be paired with at once (an adviser only trylocks another
//! mm's `mmap_lock`): the page is retried at the end of the call, and a pairing that still
//! fails is made from the twin's side, holding only the twin's lock. What fails even then is
//! counted in `pages_skipped_busy`: no page with a twin is left apart uncounted.

use crate::{
    advise::Upm,
    domain::Domain,
    ffi::{
        mm::{Mm, MmWithUser},
        task,
        upm::{Mapped, MergeableVma},
    },
    index::mm_id,
    stats::{enabled, Skip, STATS, TUNABLES},
};
use core::cell::Cell;
use kernel::{prelude::*, types::ARef};

/// Pages per call whose pairing is retried at its end because the twin's mm was busy.
const MAX_DEFERRED: usize = 4096;

/// Of those, pages found not present (a huge page being split by another adviser has its
/// pages replaced by migration entries for the while) looked at again at the end of the call.
const MAX_ABSENT_DEFERRED: usize = 1024;

/// Attempts at pairing a candidate from its side before it is counted as left apart.
const TWIN_ATTEMPTS: usize = 3;

/// What became of one advised page, as the decision about it ([`crate::decide`]) returns it.
pub(crate) enum Outcome {
    /// Merged with a twin: into a merged page, or with a candidate, which became a merged page
    /// with it (`promoted`).
    Merged {
        /// A candidate became a merged page.
        promoted: bool,
    },
    /// Replaced by the shared zero page.
    ZeroPage,
    /// A KSM page or the zero page already: merged earlier, or by another adviser meanwhile.
    AlreadyMerged,
    /// Recorded as a candidate: no twin yet, or its twin's mm was busy and the pairing was
    /// handed to the twin's side, which counts it.
    Recorded,
    /// Not merged in this attempt only because a page or its twin's mm was busy.
    Busy,
    /// Not present: migrating, swapped out, or part of a huge page another adviser splits.
    NotPresent,
    /// Left as it is, for this reason.
    Skipped(Skip),
    /// Not decided: a fatal signal came while the adviser waited for the index.
    Interrupted,
}

/// How far a call is, which decides what happens to a page whose twin's mm is busy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The walk of the range: the page is deferred to the end of the call.
    Walk,
    /// The retry of the deferred pages: the pairing is handed to the twin's side.
    Retry,
    /// Pairing from the twins' side, the last attempt: what still fails is counted.
    Twins,
}

/// The state of one MADV_UPM_MERGEABLE call.
pub(crate) struct Call<'a> {
    /// The advised address space.
    pub(crate) mm: &'a MmWithUser,
    /// Its merge domain.
    pub(crate) domain: Domain,
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
    pub(crate) fn new(mm: &'a MmWithUser, domain: Domain, stage: Stage, drained: bool) -> Self {
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

    /// Counts what became of the page at `addr`, or keeps it for the end of the call.
    ///
    /// # Errors
    ///
    /// `EINTR` for [`Outcome::Interrupted`]: the call ends (the page is counted as busy).
    pub(crate) fn record(&self, addr: usize, outcome: Outcome) -> Result {
        match outcome {
            Outcome::Merged { promoted } => {
                STATS.pages_merged.inc();
                if promoted {
                    STATS.pages_promoted.inc();
                }
            }
            Outcome::ZeroPage => STATS.pages_zero_merged.inc(),
            Outcome::AlreadyMerged => STATS.pages_already_merged.inc(),
            Outcome::Recorded => {}
            Outcome::Busy => {
                if !self.defer(addr) {
                    STATS.skip(Skip::Busy, 1);
                }
            }
            Outcome::NotPresent => {
                let absent = self.absent_deferred.get();
                if absent < MAX_ABSENT_DEFERRED && self.defer(addr) {
                    self.absent_deferred.set(absent + 1);
                } else {
                    STATS.skip(Skip::NotPresent, 1);
                }
            }
            Outcome::Skipped(reason) => STATS.skip(reason, 1),
            Outcome::Interrupted => {
                STATS.skip(Skip::Busy, 1);
                return Err(EINTR);
            }
        }
        Ok(())
    }

    /// Defers `addr` to the end of the call; false if it must be counted now (it is the end).
    fn defer(&self, addr: usize) -> bool {
        if self.stage.get() != Stage::Walk {
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
    pub(crate) fn hand_to_candidate(&self, mm: &ARef<Mm>, addr: usize) -> bool {
        if self.stage.get() == Stage::Twins {
            return false;
        }
        let mut busy = self.busy_candidates.take();
        let handed = busy.len() < MAX_DEFERRED && busy.push((mm.clone(), addr), GFP_KERNEL).is_ok();
        self.busy_candidates.set(busy);
        handed
    }

    /// A candidate's mm was found busy: pair from its side if the call is retrying (true),
    /// else remember the mm, whose `mmap_lock` the end of the call waits for (false).
    pub(crate) fn twin_busy(&self, mm: &ARef<Mm>, addr: usize) -> bool {
        if self.stage.get() == Stage::Retry && self.hand_to_candidate(mm, addr) {
            return true;
        }
        self.busy_twin.set(Some(mm.clone()));
        false
    }

    /// Whether this call may flush every CPU's LRU batches: once per call.
    pub(crate) fn may_drain(&self) -> bool {
        !self.drained.replace(true)
    }

    /// Counts what the interrupted call leaves as skipped because busy: `taken` pages already
    /// taken out of the deferred ones, the deferred pages still kept and the busy candidates.
    pub(crate) fn abandon(&self, taken: usize) {
        let left = taken + self.deferred.take().len() + self.busy_candidates.take().len();
        STATS.skip(Skip::Busy, left as u64);
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

impl Upm {
    /// The end of `call`: the deferred pages once more, then the busy candidates from their
    /// side.
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal interrupted a wait (what was left is counted as busy).
    pub(crate) fn finish(&self, call: &Call<'_>) -> Result {
        self.retry_deferred(call)?;
        self.pair_busy_candidates(call)
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
            call.abandon(deferred.len());
            EINTR
        };
        if let Some(twin) = call.busy_twin.take() {
            wait_for_mmap_lock(&twin).map_err(|_| interrupted())?;
        }
        let guard = call
            .mm
            .mmap_read_lock_killable()
            .map_err(|_| interrupted())?;
        for (i, &addr) in deferred.iter().enumerate() {
            let outcome = match guard.vma_lookup(addr).and_then(MergeableVma::from_vma) {
                Some(vma) => self.decide(call, &guard, vma, addr),
                None => Outcome::Skipped(Skip::Other),
            };
            if let Err(e) = call.record(addr, outcome) {
                call.abandon(deferred.len() - i - 1);
                return Err(e);
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
        let outcome = match vma.get_page(addr) {
            Mapped::Anon(page) => self.decide_present(twin_call, &guard, vma, addr, page, false),
            Mapped::Large(page) if enabled(&TUNABLES.split_thp) => {
                self.decide_present(twin_call, &guard, vma, addr, page, true)
            }
            // Migrating or swapped out.
            Mapped::Nothing => return Ok(TwinAttempt::NotPresent),
            _ => return Ok(TwinAttempt::Done),
        };
        match outcome {
            Outcome::Busy => Ok(TwinAttempt::Busy),
            // Counted by the caller, as every candidate its interrupted call leaves.
            Outcome::Interrupted => Err(EINTR),
            outcome => twin_call.record(addr, outcome).map(|()| TwinAttempt::Done),
        }
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
