// SPDX-License-Identifier: GPL-2.0

//! The content-hash index: candidates and merged pages.
//!
//! Like KSM's unstable and stable trees, the index holds two kinds of entries, keyed by the
//! keyed xxh64 of the page contents:
//!
//! - a **candidate** is a page advised once with no twin yet: only its mm and address are kept
//!   (an `mmgrab()` reference on the mm structure, no page reference, no write protection), so
//!   the page stays an ordinary anonymous page that its owner writes without a fault, and that
//!   the kernel may move, reclaim or collapse;
//! - a **merged** entry is a KSM page with a real stable node (`struct upm_node`), which the
//!   kernel's rmap, migration, reclaim and memory-failure code handle as KSM's own. The index
//!   holds a reference on the node, never on the page.
//!
//! A hash match only makes an entry a twin to try: merging always write-protects and compares
//! the full pages in the kernel, so a collision costs a compare and never corrupts memory. At
//! most [`MAX_PROBES`] entries are tried per page, so pages crafted to share a hash cost bounded
//! work; entries found stale on the way are dropped and cost no try (each is dropped once).
//! Merged pages that take new mappings sort before candidates, and candidates before merged
//! pages that are full: a page joins a live merged page of its contents however many
//! candidates share its hash, as ksmd looks in its stable tree before its unstable one.
//!
//! Each (mm, address) has at most one candidate: advising the same range again replaces it,
//! so candidates are bounded by the memory advised and their nodes are charged to the
//! adviser's memory cgroup.
//!
//! Entries go stale: a candidate's page changes or goes away (its area is unmapped), its
//! process exits; a merged page is freed once nothing maps it. Stale entries are dropped when a
//! lookup meets them and by the periodic sweep, which looks at a bounded number per run.
//!
//! Every key starts with the merge domain of its page (see [`crate::stats::domain_of`]): a page
//! is only ever compared with entries of its own domain.
//!
//! # Lock order
//!
//! 1. `mmap_lock` of the advised mm (read), held by `merge.rs` for a batch of pages;
//! 2. [`ContentIndex::inner`], a mutex held for the whole decision about one page, so that two
//!    advisers never pair with the same candidate;
//! 3. `mmap_lock` of a candidate's mm, only ever with `mmap_read_trylock()` (to pair with it,
//!    and in the sweep, to check that its area is still mapped). A pairing that fails on it is
//!    retried at the end of the call from the candidate's side: with none of the caller's
//!    locks held, the candidate's `mmap_lock` is then taken as the advised mm's of step 1;
//! 4. folio locks, the kernel's `upm_lock` and the page table locks, inside the C primitives;
//!    the lock of [`crate::groups::Groups`], to find a process's domain, at any point after
//!    step 1 and with nothing taken inside it.

use crate::ffi::{
    mm::{Mm, MmWithUser},
    task::cond_resched,
    upm_ops::{MergeableVma, UpmNode},
};
use kernel::{
    new_mutex,
    prelude::*,
    rbtree::RBTree,
    sync::{
        lock::{mutex::MutexBackend, Guard},
        Mutex,
    },
    types::ARef,
};

/// Entries tried per advised page: bounds the work that colliding pages can cause.
pub(crate) const MAX_PROBES: usize = 8;

/// Entries examined per hold of the index lock by the sweep.
const SWEEP_BATCH: usize = 64;

/// Entries examined per run of the sweep: bounded work, whatever the size of the index.
const SWEEP_PER_RUN: usize = 4096;

/// Merge domain, content hash, then the entry's [`Rank`] and a sequence number that tells
/// entries apart.
///
/// The domain comes first: a page is only ever looked up among the entries of its own domain.
pub(crate) type Key = (u64, u64, u64);

/// The order in which the entries of one domain and hash are tried, in the top bits of the
/// last field of their [`Key`].
#[derive(Clone, Copy)]
enum Rank {
    /// A merged page that takes new mappings.
    Merged = 0,
    /// A candidate.
    Candidate = 1,
    /// A merged page with KSM's `max_page_sharing` mappings: kept for its sharers' counts.
    Full = 2,
}

/// Where [`Rank`] sits in a key's last field.
const RANK_SHIFT: u32 = 62;

/// One entry of the index.
pub(crate) enum Entry {
    /// A page advised once, identified by where it is mapped.
    Candidate {
        /// Its address space (the structure only: the process may have exited).
        mm: ARef<Mm>,
        /// Its address.
        addr: usize,
    },
    /// A merged page, identified by its stable node.
    Merged(ARef<UpmNode>),
}

/// A twin to try, taken out of the index with its own references.
pub(crate) enum Probe {
    /// A candidate.
    Candidate(ARef<Mm>, usize),
    /// A merged page.
    Merged(ARef<UpmNode>),
}

/// What the index holds, for the sysfs counters.
#[derive(Default, Clone, Copy)]
pub(crate) struct IndexCounts {
    /// Merged pages mapped by two or more page table entries.
    pub(crate) shared: u64,
    /// Sum over merged pages of (mappings - 1): the pages saved.
    pub(crate) sharing: u64,
    /// Merged pages mapped exactly once.
    pub(crate) unshared: u64,
    /// Merged entries, including pages about to be freed.
    pub(crate) nodes: u64,
    /// Candidate entries.
    pub(crate) candidates: u64,
}

impl IndexCounts {
    /// Counts one entry; gives back the node of a merged page whose mappings cannot be counted
    /// now (its page is locked, for example while it migrates): count it with
    /// [`Self::add_mappings`] once the index lock is dropped.
    fn add(&mut self, entry: &Entry) -> Option<ARef<UpmNode>> {
        let node = match entry {
            Entry::Candidate { .. } => {
                self.candidates += 1;
                return None;
            }
            Entry::Merged(node) => node,
        };
        self.nodes += 1;
        match node.try_mapcount() {
            Ok(Some(n)) => self.add_mappings(n),
            Ok(None) => return Some(node.clone()),
            Err(_) => {}
        }
        None
    }

    /// Counts a merged page mapped `n` times.
    fn add_mappings(&mut self, n: u32) {
        match n {
            0 => {}
            1 => self.unshared += 1,
            n => {
                self.shared += 1;
                self.sharing += u64::from(n) - 1;
            }
        }
    }

    /// Counts the pages `add` gave back, waiting for their locks: the index lock is not held.
    fn add_waiting(&mut self, busy: KVec<ARef<UpmNode>>) {
        for node in busy {
            if let Ok(n) = node.mapcount_waiting() {
                self.add_mappings(n);
            }
        }
    }
}

/// Where the sweep stands in its pass over the index.
struct SweepPass {
    /// The next key to look at.
    resume: Key,
    /// Counts of the entries seen so far in this pass.
    counts: IndexCounts,
}

/// The entries, with a second map that finds the candidate of an (mm, address).
pub(crate) struct Index {
    entries: RBTree<Key, Entry>,
    candidate_keys: RBTree<(usize, usize), Key>,
    next_seq: u64,
    /// Exact numbers of candidate and merged entries, kept as entries come and go.
    candidates: u64,
    nodes: u64,
    sweep: SweepPass,
    /// The counts of the last complete sweep pass: what unprivileged readers get.
    swept: IndexCounts,
}

/// The content-hash index and its lock.
#[pin_data]
pub(crate) struct ContentIndex {
    #[pin]
    inner: Mutex<Index>,
}

impl ContentIndex {
    /// An empty index.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            inner <- new_mutex!(
                Index {
                    entries: RBTree::new(),
                    candidate_keys: RBTree::new(),
                    next_seq: 0,
                    candidates: 0,
                    nodes: 0,
                    sweep: SweepPass {
                        resume: (0, 0, 0),
                        counts: IndexCounts::default(),
                    },
                    swept: IndexCounts::default(),
                },
                "upm_index"
            ),
        })
    }

    /// Locks the index; see the lock order above.
    pub(crate) fn lock(&self) -> Guard<'_, Index, MutexBackend> {
        self.inner.lock()
    }

    /// Runs the next part of the sweep pass: looks at up to [`SWEEP_PER_RUN`] entries, drops
    /// those whose page or process is gone and counts the others. Returns how many merged
    /// pages were dropped and whether the pass is complete (its counts are then published).
    pub(crate) fn sweep(&self) -> (u64, bool) {
        let mut freed = 0;
        for _ in 0..SWEEP_PER_RUN / SWEEP_BATCH {
            let mut stale: [Option<Key>; SWEEP_BATCH] = [None; SWEEP_BATCH];
            let mut found = 0;
            let mut guard = self.lock();
            let index = &mut *guard;
            let mut cursor = index.entries.cursor_lower_bound(&index.sweep.resume);
            let mut seen = 0;
            let mut done = true;
            while let Some(c) = cursor {
                let (key, entry) = c.current();
                if seen == SWEEP_BATCH {
                    index.sweep.resume = *key;
                    done = false;
                    break;
                }
                seen += 1;
                // A merged page that nothing maps any more is no twin for anyone: its node
                // dies once the page is freed (a per-CPU folio batch may still hold it).
                // A merged page whose lock is held (it may be migrating, all its mappings
                // replaced for the while) is not gone; the next pass counts it.
                let gone = match entry {
                    Entry::Candidate { mm, addr } => !candidate_mapped(mm, *addr),
                    Entry::Merged(node) => matches!(node.try_mapcount(), Ok(Some(0)) | Err(_)),
                };
                if gone {
                    freed += u64::from(matches!(entry, Entry::Merged(_)));
                    stale[found] = Some(*key);
                    found += 1;
                } else {
                    drop(index.sweep.counts.add(entry));
                }
                cursor = c.move_next();
            }
            for key in stale.iter().flatten() {
                drop(index.remove(key));
            }
            if done {
                index.swept = core::mem::take(&mut index.sweep.counts);
                index.sweep.resume = (0, 0, 0);
                return (freed, true);
            }
            drop(guard);
            cond_resched();
        }
        (freed, false)
    }

    /// Counts the merged pages by how often they are mapped, now: a walk of the whole index,
    /// for privileged readers only.
    pub(crate) fn counts(&self) -> IndexCounts {
        let mut counts = IndexCounts::default();
        let mut busy = KVec::new();
        let index = self.lock();
        for entry in index.entries.values() {
            if let Some(node) = counts.add(entry) {
                // Rare (a page moving right now); without memory it goes uncounted.
                let _ = busy.push(node, GFP_KERNEL);
            }
        }
        drop(index);
        counts.add_waiting(busy);
        counts
    }

    /// Calls `emit` with each domain that has entries and its counts, in domain order, until
    /// it returns false. Walks the whole index: for privileged readers only.
    pub(crate) fn domain_counts(&self, mut emit: impl FnMut(u64, &IndexCounts) -> bool) {
        let mut domains: KVec<(u64, IndexCounts, KVec<ARef<UpmNode>>)> = KVec::new();
        let index = self.lock();
        for (key, entry) in index.entries.iter() {
            if domains.last().map_or(true, |(domain, ..)| *domain != key.0)
                && domains
                    .push((key.0, IndexCounts::default(), KVec::new()), GFP_KERNEL)
                    .is_err()
            {
                break;
            }
            let Some((_, counts, busy)) = domains.last_mut() else {
                break;
            };
            if let Some(node) = counts.add(entry) {
                let _ = busy.push(node, GFP_KERNEL);
            }
        }
        drop(index);
        for (domain, mut counts, busy) in domains {
            counts.add_waiting(busy);
            if !emit(domain, &counts) {
                return;
            }
        }
    }

    /// The counts without a walk: mappings as of the last complete sweep pass (at most a few
    /// sweep periods old), entries exact.
    pub(crate) fn cached_counts(&self) -> IndexCounts {
        let index = self.lock();
        IndexCounts {
            candidates: index.candidates,
            nodes: index.nodes,
            ..index.swept
        }
    }
}

/// A number that identifies `mm` while it is referenced.
pub(crate) fn mm_id(mm: &Mm) -> usize {
    mm.as_raw() as usize
}

/// Whether a candidate may still pair: its process exists and `addr` still lies in an area
/// UPM may merge in. An mm whose `mmap_lock` is busy counts as still mapping it.
fn candidate_mapped(mm: &Mm, addr: usize) -> bool {
    let Some(user) = mm.mmget_not_zero() else {
        return false;
    };
    // Never the last `mmput()` under the index lock: that would tear down an address space.
    let user = MmWithUser::into_mmput_async(user);
    let Some(guard) = user.mmap_read_trylock() else {
        return true;
    };
    guard
        .vma_lookup(addr)
        .and_then(MergeableVma::from_vma)
        .is_some()
}

impl Index {
    /// Up to `max` entries of `domain` with `hash`, in the order they are to be tried (see
    /// [`Rank`]), from the one whose key ends in `from` or the next, with new references.
    pub(crate) fn probe(
        &mut self,
        domain: u64,
        hash: u64,
        from: u64,
        max: usize,
    ) -> KVec<(Key, Probe)> {
        let mut probes = KVec::new();
        let mut cursor = self.entries.cursor_lower_bound(&(domain, hash, from));
        while let Some(c) = cursor {
            let (key, entry) = c.current();
            if (key.0, key.1) != (domain, hash) || probes.len() == max {
                break;
            }
            // One allocation per look at most; a failed one only shortens the list of twins.
            if probes.is_empty() && probes.reserve(max, GFP_KERNEL).is_err() {
                break;
            }
            let probe = match entry {
                Entry::Merged(node) => Probe::Merged(node.clone()),
                Entry::Candidate { mm, addr } => Probe::Candidate(mm.clone(), *addr),
            };
            let _ = probes.push((*key, probe), GFP_KERNEL);
            cursor = c.move_next();
        }
        probes
    }

    /// Whether `node` has an entry of `domain` under `hash`.
    pub(crate) fn has_node(&mut self, domain: u64, hash: u64, node: &UpmNode) -> bool {
        let mut cursor = self.entries.cursor_lower_bound(&(domain, hash, 0));
        while let Some(c) = cursor {
            let (key, entry) = c.current();
            if (key.0, key.1) != (domain, hash) {
                break;
            }
            if matches!(entry, Entry::Merged(n) if n.id() == node.id()) {
                return true;
            }
            cursor = c.move_next();
        }
        false
    }

    /// Takes the entry at `key` out of the index.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        match &entry {
            Entry::Candidate { mm, addr } => {
                self.candidate_keys.remove(&(mm_id(mm), *addr));
                self.candidates -= 1;
            }
            Entry::Merged(_) => self.nodes -= 1,
        }
        Some(entry)
    }

    /// Moves the merged page at `key`, which takes no more mappings, behind every other entry
    /// of its domain and hash: probed after the entries that still can, however many full ones
    /// there are.
    pub(crate) fn move_to_back(&mut self, key: &Key) {
        let Some(Entry::Merged(node)) = self.entries.get(key) else {
            return;
        };
        let node = node.clone();
        self.replace(key, Rank::Full, Entry::Merged(node));
    }

    /// Turns the candidate at `key` into the merged page `node` (same domain and hash: the pair
    /// just merged), ranked with the merged pages; gives `node` back if `key` has no candidate.
    pub(crate) fn promote(&mut self, key: &Key, node: ARef<UpmNode>) -> Result<(), ARef<UpmNode>> {
        let Some(Entry::Candidate { mm, addr }) = self.entries.get(key) else {
            return Err(node);
        };
        let place = (mm_id(mm), *addr);
        self.candidate_keys.remove(&place);
        self.candidates -= 1;
        self.nodes += 1;
        self.replace(key, Rank::Merged, Entry::Merged(node));
        Ok(())
    }

    /// Replaces the entry at `key` by `entry` under a new key of `rank`, behind the others of
    /// that rank, reusing its tree node: nothing to allocate, nothing that can fail.
    fn replace(&mut self, key: &Key, rank: Rank, entry: Entry) {
        let Some(old) = self.entries.remove_node(key) else {
            return;
        };
        let new_key = self.next_key(key.0, key.1, rank);
        self.entries
            .insert(old.into_reservation().into_node(new_key, entry));
    }

    fn next_key(&mut self, domain: u64, hash: u64, rank: Rank) -> Key {
        self.next_seq += 1;
        (domain, hash, (rank as u64) << RANK_SHIFT | self.next_seq)
    }

    /// Adds a merged page of `domain` under `hash`.
    pub(crate) fn insert_merged(&mut self, domain: u64, hash: u64, node: ARef<UpmNode>) -> Result {
        let key = self.next_key(domain, hash, Rank::Merged);
        self.entries
            .try_create_and_insert(key, Entry::Merged(node), GFP_KERNEL_ACCOUNT)?;
        self.nodes += 1;
        Ok(())
    }

    /// Records the page of `mm` at `addr` as a candidate of `domain` with `hash`, replacing the
    /// candidate that address had.
    pub(crate) fn insert_candidate(
        &mut self,
        domain: u64,
        hash: u64,
        mm: &Mm,
        addr: usize,
    ) -> Result {
        let mm_id = mm_id(mm);
        if let Some(old) = self.candidate_keys.get(&(mm_id, addr)).copied() {
            if (old.0, old.1) == (domain, hash) {
                return Ok(());
            }
            drop(self.remove(&old));
        }
        let key = self.next_key(domain, hash, Rank::Candidate);
        self.candidate_keys
            .try_create_and_insert((mm_id, addr), key, GFP_KERNEL_ACCOUNT)?;
        let entry = Entry::Candidate {
            mm: ARef::from(mm),
            addr,
        };
        if let Err(e) = self
            .entries
            .try_create_and_insert(key, entry, GFP_KERNEL_ACCOUNT)
        {
            self.candidate_keys.remove(&(mm_id, addr));
            return Err(e);
        }
        self.candidates += 1;
        Ok(())
    }

    /// Whether the page of `mm` at `addr` is a candidate.
    pub(crate) fn has_candidate(&self, mm: &Mm, addr: usize) -> bool {
        self.candidate_keys.get(&(mm_id(mm), addr)).is_some()
    }

    /// Drops the candidate of `mm` at `addr`, if any (the page was merged or unmerged).
    pub(crate) fn forget_candidate(&mut self, mm: &Mm, addr: usize) {
        if let Some(key) = self.candidate_keys.get(&(mm_id(mm), addr)).copied() {
            drop(self.remove(&key));
        }
    }
}
