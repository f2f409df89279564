// SPDX-License-Identifier: GPL-2.0

//! Reaching a candidate to merge with: its process, still in the caller's domain, its
//! `mmap_lock` taken without waiting, and its page, still an ordinary anonymous page.

use crate::{
    advise::Upm,
    call::Call,
    ffi::{
        mm::{virt::VmaRef, Mm, MmWithUser, MmapReadGuard},
        page::UserPage,
        upm::{Mapped, MergeError, MergeableVma},
    },
    index::mm_id,
};

/// Why a candidate could not be paired with.
pub(crate) enum PairError {
    /// The candidate is stale: drop it.
    Stale,
    /// Try again later (its mm is being written to, or a page lock is contended).
    Busy,
    /// The page being advised cannot merge (pinned, gone...).
    Page(MergeError),
}

impl Upm {
    /// Calls `merge` with the candidate page of `twin_mm` at `twin_addr` and its VMA, locked,
    /// if the candidate is still in the caller's domain. `like` is the page it should equal: a
    /// candidate in a huge page is compared with it before the huge page is split.
    pub(crate) fn with_candidate<T>(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        twin_mm: &Mm,
        twin_addr: usize,
        like: &UserPage,
        merge: impl FnOnce(&MergeableVma, &UserPage) -> Result<T, MergeError>,
    ) -> Result<T, PairError> {
        if mm_id(twin_mm) == mm_id(call.mm) {
            let twin_vma = guard.vma_lookup(twin_addr).ok_or(PairError::Stale)?;
            return with_candidate_page(twin_vma, twin_addr, like, merge);
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
        with_candidate_page(twin_vma, twin_addr, like, merge)
    }
}

/// Calls `merge` with the candidate page at `twin_addr` of `twin_vma`, a huge page split
/// first if the candidate's page in it holds the contents of `like`.
fn with_candidate_page<T>(
    twin_vma: &VmaRef,
    twin_addr: usize,
    like: &UserPage,
    merge: impl FnOnce(&MergeableVma, &UserPage) -> Result<T, MergeError>,
) -> Result<T, PairError> {
    let twin_vma = MergeableVma::from_vma(twin_vma).ok_or(PairError::Stale)?;
    let mut twin = twin_vma.get_page(twin_addr);
    if let Mapped::Large(page) = &twin {
        // KSM's rule: a huge page is split for a twin only, known by a full compare. A
        // candidate that changed since it was hashed keeps its huge page.
        if !page.same_contents(like) {
            return Err(PairError::Page(MergeError::Differ));
        }
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
