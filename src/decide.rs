// SPDX-License-Identifier: GPL-2.0

//! The decision about one advised page: the zero page, else a twin from the index, else a
//! new candidate.
//!
//! Everything about one content is decided under the lock of its shard of the index, so two
//! advisers never pair with the same candidate. The decision returns its [`Outcome`] for the
//! advised page, which the call records; what happens to other pages on the way (a collision,
//! a candidate absorbed into the new merged page, a dead node dropped) is counted here.

use crate::{
    advise::Upm,
    call::{Call, Outcome},
    domain::Domain,
    ffi::{
        mm::{Mm, MmapReadGuard},
        page::UserPage,
        upm::{self, Mapped, MergeError, MergeableVma, UpmNode},
    },
    index::{mm_id, Index, Key, Probe, MAX_PROBES},
    pair::PairError,
    stats::{enabled, Skip, STATS, TUNABLES},
};
use kernel::{prelude::*, types::ARef};

/// What trying one twin from the index came to.
enum Tried {
    /// The advised page is merged, into this node; `promoted` if the twin was a candidate.
    Merged(ARef<UpmNode>, bool),
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

impl Upm {
    /// Decides about the page at `addr`: merged, recorded as a candidate or left as it is.
    pub(crate) fn decide(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        vma: &MergeableVma,
        addr: usize,
    ) -> Outcome {
        let (page, large) = match vma.get_page(addr) {
            Mapped::Anon(page) => (page, false),
            Mapped::Large(page) => {
                if !enabled(&TUNABLES.split_thp) {
                    return Outcome::Skipped(Skip::Large);
                }
                (page, true)
            }
            // Migrating (another adviser may be splitting its huge page right now) or swapped
            // out: the call looks again at its end.
            Mapped::Nothing => return Outcome::NotPresent,
            Mapped::Ksm(node) => {
                if let Some(node) = node {
                    self.adopt(call.domain, &node);
                }
                return Outcome::AlreadyMerged;
            }
            Mapped::Zero => return Outcome::AlreadyMerged,
            Mapped::Other => return Outcome::Skipped(Skip::Other),
        };
        self.decide_present(call, guard, vma, addr, page, large)
    }

    /// Decides about the ordinary page `page` mapped at `addr`.
    pub(crate) fn decide_present(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        vma: &MergeableVma,
        addr: usize,
        page: ARef<UserPage>,
        large: bool,
    ) -> Outcome {
        let mut result = self.merge_page(call, guard, vma, addr, page, large);
        if matches!(result, Err(MergeError::Batched)) && call.may_drain() {
            // A per-CPU LRU batch may hold the page: flush them all, once per call, and retry.
            upm::drain_lru();
            result = match vma.get_page(addr) {
                Mapped::Anon(page) => self.merge_page(call, guard, vma, addr, page, false),
                _ => Err(MergeError::Gone),
            };
        }
        match result {
            Ok(outcome) => outcome,
            Err(MergeError::Busy) => Outcome::Busy,
            Err(e) => Outcome::Skipped(skip_reason(e)),
        }
    }

    /// Indexes a merged page that the index does not know (merged before a reload), if it was
    /// merged in the caller's domain: a page of another domain is never offered as a twin.
    fn adopt(&self, domain: Domain, node: &ARef<UpmNode>) {
        if Domain::from_tag(node.domain()) != domain {
            return;
        }
        let Ok(hash) = node.content_hash(self.seed) else {
            return;
        };
        // Interrupted: the page stays merged, only not offered as a twin until advised again.
        let Ok(mut index) = self.index.lock(domain, hash) else {
            return;
        };
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
    ) -> Result<Outcome, MergeError> {
        let (mm, domain) = (call.mm, call.domain);
        let hash = page.content_hash(self.seed);
        // No page reference while waiting for the index: an adviser holding it may be pairing
        // with this very page (a candidate since an earlier advice) or splitting the huge page
        // it belongs to, and an unexplained reference makes either fail.
        drop(page);
        let index = self
            .index
            .forget_changed_candidate(mm, addr, domain, hash)
            .and_then(|()| self.index.lock(domain, hash));
        let Ok(mut index) = index else {
            return Ok(Outcome::Interrupted);
        };
        let mut probes = index.probe(0, MAX_PROBES);
        if hash != self.zero_hash && probes.is_empty() {
            // No twin: a candidate, left as it is (a huge page whole).
            index
                .insert_candidate(mm, addr)
                .map_err(|_| MergeError::NoMemory)?;
            return Ok(Outcome::Recorded);
        }
        // Where the twins start in `probes`: the first may have been found stale below.
        let mut first = 0;
        if large && hash != self.zero_hash {
            // KSM's rule: split a huge page only when one of its pages has a twin, known by a
            // full compare. Candidates that changed since they were hashed leave it whole.
            if let Mapped::Large(page) = vma.get_page(addr) {
                match self.first_twin(call, guard, &mut index, addr, &page, &probes) {
                    Some(twin) => first = twin,
                    None => {
                        index
                            .insert_candidate(mm, addr)
                            .map_err(|_| MergeError::NoMemory)?;
                        return Ok(Outcome::Recorded);
                    }
                }
            }
        }
        if large {
            vma.split_large_page(addr).map_err(|_| MergeError::Busy)?;
        }
        let page = match vma.get_page(addr) {
            Mapped::Anon(page) => page,
            // Merged by another adviser while this one waited for the index.
            Mapped::Ksm(_) | Mapped::Zero => return Ok(Outcome::AlreadyMerged),
            _ => return Err(MergeError::Gone),
        };
        if hash == self.zero_hash && enabled(&TUNABLES.use_zero_pages) {
            match vma.merge_zero(&page, addr) {
                Ok(()) => {
                    index.forget_candidate(mm, addr);
                    return Ok(Outcome::ZeroPage);
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
            for (i, (key, probe)) in probes.iter().enumerate().skip(first) {
                match self.try_twin(call, guard, &mut index, &advised, key, probe)? {
                    Tried::Merged(node, promoted) => {
                        index.forget_candidate(mm, addr);
                        let rest = &probes[i + 1..];
                        self.absorb(&mut index, call, guard, rest, &node, &advised);
                        return Ok(Outcome::Merged { promoted });
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
                    let from = last.order + 1;
                    wanted = tries;
                    probes = index.probe(from, wanted);
                    first = 0;
                }
                _ => break,
            }
        }
        index
            .insert_candidate(mm, addr)
            .map_err(|_| MergeError::NoMemory)?;
        if twin_busy && !handed_to_twin {
            // Not merged in this call, only because its twin was busy: say so.
            return Ok(Outcome::Busy);
        }
        // Merged or counted when the twin is paired from its side.
        Ok(Outcome::Recorded)
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
                    Ok(()) => Ok(Tried::Merged(node.clone(), false)),
                    Err(MergeError::Differ) => {
                        STATS.hash_collisions.inc();
                        Ok(Tried::Kept)
                    }
                    Err(MergeError::NodeGone) => {
                        drop_freed_node(index, key);
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
        if is_advised_page(call, twin_mm, twin_addr, addr) {
            return Ok(Tried::Kept);
        }
        let pair = self.with_candidate(call, guard, twin_mm, twin_addr, page, |twin_vma, twin| {
            // The candidate, advised first, keeps its frame: the new page is the one replaced.
            let fresh_frame = enabled(&TUNABLES.fresh_frame);
            twin_vma.merge_pair(twin, vma, page, call.domain.tag(), fresh_frame)
        });
        match pair {
            Ok(node) => {
                // The pair is merged whether or not the index can keep the node.
                if let Err(node) = index.promote(key, node.clone()) {
                    let _ = index.insert_merged(node);
                }
                Ok(Tried::Merged(node, true))
            }
            Err(PairError::Busy) => Ok(if call.twin_busy(twin_mm, twin_addr) {
                Tried::HandedToTwin
            } else {
                Tried::TwinBusy
            }),
            Err(PairError::Stale) => {
                drop(index.remove(key));
                Ok(Tried::Dropped)
            }
            Err(PairError::Page(MergeError::Differ)) => {
                drop_changed_candidate(index, key);
                Ok(Tried::Dropped)
            }
            Err(PairError::Page(e)) => Err(e),
        }
    }

    /// The first of `probes` that may be a twin of `page`, the page of a huge page at `addr`: a
    /// live stable page, or a candidate holding the same bytes now (or one that cannot be
    /// looked at now: its pairing decides). Twins found changed or gone leave the index here.
    /// `None` if none is left, so that the huge page need not be split.
    fn first_twin(
        &self,
        call: &Call<'_>,
        guard: &MmapReadGuard<'_>,
        index: &mut Index<'_>,
        addr: usize,
        page: &UserPage,
        probes: &[(Key, Probe)],
    ) -> Option<usize> {
        for (i, (key, probe)) in probes.iter().enumerate() {
            let (twin_mm, twin_addr) = match probe {
                Probe::Merged(node) => {
                    if node.try_mapcount().is_ok() {
                        return Some(i);
                    }
                    drop_freed_node(index, key);
                    continue;
                }
                Probe::Candidate(twin_mm, twin_addr) => (twin_mm, *twin_addr),
            };
            if is_advised_page(call, twin_mm, twin_addr, addr) {
                continue;
            }
            let same = self.with_candidate(call, guard, twin_mm, twin_addr, page, |_, twin| {
                if twin.same_contents(page) {
                    Ok(())
                } else {
                    Err(MergeError::Differ)
                }
            });
            match same {
                Err(PairError::Stale) => drop(index.remove(key)),
                Err(PairError::Page(MergeError::Differ)) => drop_changed_candidate(index, key),
                _ => return Some(i),
            }
        }
        // Entries past the probed ones may be twins: the pairing looks further.
        (probes.len() == MAX_PROBES).then_some(probes.len())
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
        advised: &Advised<'_>,
    ) {
        let Advised { page, addr, .. } = *advised;
        for (key, probe) in rest {
            let Probe::Candidate(twin_mm, twin_addr) = probe else {
                continue;
            };
            if is_advised_page(call, twin_mm, *twin_addr, addr) {
                continue;
            }
            let merged =
                self.with_candidate(call, guard, twin_mm, *twin_addr, page, |twin_vma, twin| {
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
}

/// Whether the candidate of `twin_mm` at `twin_addr` is the page being advised at `addr`:
/// this very page, advised again, is never its own twin.
fn is_advised_page(call: &Call<'_>, twin_mm: &Mm, twin_addr: usize, addr: usize) -> bool {
    mm_id(twin_mm) == mm_id(call.mm) && twin_addr == addr
}

/// Drops the candidate at `key`: its page or the advised one changed since it was hashed,
/// which counts as a hash collision.
fn drop_changed_candidate(index: &mut Index<'_>, key: &Key) {
    STATS.hash_collisions.inc();
    drop(index.remove(key));
}

/// Drops the merged page at `key`: nothing maps it any more, and its node dies with it.
fn drop_freed_node(index: &mut Index<'_>, key: &Key) {
    drop(index.remove(key));
    STATS.stable_pages_freed.inc();
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
