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
//! Every key starts with the merge domain of its page (see [`crate::domain`]): a page is only
//! ever compared with entries of its own domain.
//!
//! The entries are spread over [`SHARDS`] shards by domain and hash, each under its own lock:
//! the decision about one page (lookup, merge, recording) holds only the lock of its contents'
//! shard, so advisers of other contents and of other domains proceed in parallel, and a wait
//! inside one merge (a folio lock, a huge page split, reclaim) holds up only the contents of one
//! shard in [`SHARDS`]. Where each (mm, address) has its candidate is kept apart, in the
//! places map ([`ContentIndex::places`]), split by process into [`PLACE_SHARDS`] shards, each
//! locked only to read or change one place and never across a merge: a candidate whose place
//! moved on (its page was advised again with other contents while its old shard was busy) is
//! stale, and dropped when a lookup or the sweep meets it. No lock of the index is shared by
//! every adviser on the machine (the group table's, [`crate::groups`], is read once per call
//! and per pairing with another process, under `domain_policy=group` only).
//!
//! # Lock order
//!
//! 1. `mmap_lock` of the advised mm (read), held by the walk (`advise.rs`) for a batch of pages;
//! 2. the lock of one shard of the index ([`ContentIndex::lock`]), held for the whole decision
//!    about one page, so that two advisers never pair with the same candidate. Never two shard
//!    locks at once. An adviser waits for it killably (a fatal signal ends the call with
//!    `EINTR`); only the sweep, a kernel thread, and the readers of the counts wait for it
//!    uninterruptibly, each for one decision at most;
//! 3. `mmap_lock` of a candidate's mm, only ever with `mmap_read_trylock()` (to pair with it,
//!    and in the sweep, to check that its area is still mapped). A pairing that fails on it is
//!    retried at the end of the call from the candidate's side: with none of the caller's
//!    locks held, the candidate's `mmap_lock` is then taken as the advised mm's of step 1;
//! 4. folio locks, the kernel's node stripe and slot locks and the page table locks, inside
//!    the C primitives (their order is in `mm/ksm.c`); the lock of [`crate::groups::Groups`],
//!    to find a process's domain, at any point after step 1 and with nothing taken inside it;
//! 5. the lock of the places of one process ([`ContentIndex::places`]), innermost: taken with
//!    or without a shard lock, for a lookup or a change of one place, never two at once, and
//!    nothing is taken or allocated inside it.
//!
//! The sweep's own lock ([`ContentIndex::sweep`]) is taken before a shard's, by the sweep only.

use crate::{
    domain::Domain,
    ffi::{
        mm::{Mm, MmWithUser},
        sync::{new_killable_mutex, KillableGuard, KillableMutex},
        task::cond_resched,
        upm::{MergeableVma, UpmNode},
    },
};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::{
    new_mutex,
    prelude::*,
    rbtree::{RBTree, RBTreeNode},
    sync::{
        lock::{mutex::MutexBackend, Guard},
        Mutex,
    },
    types::ARef,
};

/// Entries tried per advised page: bounds the work that colliding pages can cause.
pub(crate) const MAX_PROBES: usize = 8;

/// Shards of the index, each with its own lock (a power of two). Enough that a page of other
/// contents than those many advisers merge at once rarely shares their shard: with 64, a
/// process advising one page of unique data while 16 advisers merged the same weights waited
/// 15-19 ms at p99 (1 page in 64 behind up to 16 merges); with 1024, 0.4-0.6 ms (bystanders
/// section of upm_bench, release kernel in TCG). 1024 shards cost 64-128 KiB (lockdep doubles
/// a mutex).
const SHARDS: usize = 1024;

/// Shards of the places map (a power of two), by process: the places of one process are in
/// one shard, so an unmerge finds its range there, and advisers in different processes share a
/// places lock only when their processes fall in the same shard.
const PLACE_SHARDS: usize = 64;

/// Entries examined per hold of a shard lock by the sweep.
const SWEEP_BATCH: usize = 64;

/// Entries examined per run of the sweep: bounded work (and at most one visit of each shard
/// more), whatever the size of the index.
const SWEEP_PER_RUN: usize = 4096;

/// Where an entry sits in the index, in the order its fields are compared: the domain first,
/// so that a page is only ever looked up among the entries of its own domain.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Key {
    /// The merge domain of the entry's page.
    pub(crate) domain: Domain,
    /// The keyed hash of its contents.
    pub(crate) hash: u64,
    /// Its [`Rank`] in the top bits, then a sequence number that tells entries apart.
    pub(crate) order: u64,
}

impl Key {
    /// The domain and contents the entry is for.
    fn content(&self) -> (Domain, u64) {
        (self.domain, self.hash)
    }

    /// The shard that holds the entry.
    fn shard(&self) -> usize {
        shard_of(self.domain, self.hash)
    }
}

/// The order in which the entries of one domain and hash are tried, in the top bits of the
/// [`Key::order`].
#[derive(Clone, Copy)]
enum Rank {
    /// A merged page that takes new mappings.
    Merged = 0,
    /// A candidate.
    Candidate = 1,
    /// A merged page with KSM's `max_page_sharing` mappings: kept for its sharers' counts.
    Full = 2,
}

/// Where [`Rank`] sits in [`Key::order`].
const RANK_SHIFT: u32 = 62;

/// The shard that holds the entries of `domain` with `hash`.
fn shard_of(domain: Domain, hash: u64) -> usize {
    // The hash is a keyed xxh64, uniform in its bits; the domain moves each domain's entries
    // to other shards, so that domains advising the same contents do not share locks.
    ((hash ^ domain.tag().wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 32) as usize % SHARDS
}

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
    /// The shard and the key in it to look at next.
    shard: usize,
    resume: Key,
    /// Counts of the entries seen so far in this pass.
    counts: IndexCounts,
}

/// The entries of one shard.
pub(crate) struct Shard {
    entries: RBTree<Key, Entry>,
    next_seq: u64,
}

/// The place of each candidate: (mm, address) to the key of its entry.
type Places = RBTree<(usize, usize), Key>;

/// The places shard that holds the places of the process `mm_id` identifies.
fn places_shard_of(mm_id: usize) -> usize {
    // mm_structs are slab objects of a kilobyte or more: their low bits say little.
    (mm_id.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize) >> 32) % PLACE_SHARDS
}

/// The content-hash index and its locks.
#[pin_data]
pub(crate) struct ContentIndex {
    shards: KVec<Pin<KBox<KillableMutex<Shard>>>>,
    /// Where each (mm, address) has its candidate, by [`places_shard_of`] its mm; an entry
    /// whose place holds another key is stale. See the lock order above.
    places: KVec<Pin<KBox<Mutex<Places>>>>,
    /// The sweep's position, taken by the sweep only.
    #[pin]
    sweep: Mutex<SweepPass>,
    /// The counts of the last complete sweep pass: what unprivileged readers get.
    #[pin]
    swept: Mutex<IndexCounts>,
    /// Exact numbers of candidates (places) and merged entries.
    candidates: AtomicU64,
    nodes: AtomicU64,
}

/// The entries of one domain and hash, locked: everything an adviser decides about a page.
pub(crate) struct Index<'a> {
    shard: KillableGuard<'a, Shard>,
    owner: &'a ContentIndex,
    domain: Domain,
    hash: u64,
}

impl ContentIndex {
    /// An empty index.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let mut shards = KVec::with_capacity(SHARDS, GFP_KERNEL)?;
        for _ in 0..SHARDS {
            let shard = Shard {
                entries: RBTree::new(),
                next_seq: 0,
            };
            shards.push(
                KBox::pin_init(new_killable_mutex!(shard, "upm_index_shard"), GFP_KERNEL)?,
                GFP_KERNEL,
            )?;
        }
        let mut places = KVec::with_capacity(PLACE_SHARDS, GFP_KERNEL)?;
        for _ in 0..PLACE_SHARDS {
            places.push(
                KBox::pin_init(new_mutex!(RBTree::new(), "upm_index_places"), GFP_KERNEL)?,
                GFP_KERNEL,
            )?;
        }
        Ok(pin_init!(Self {
            shards,
            places,
            sweep <- new_mutex!(
                SweepPass {
                    shard: 0,
                    resume: Key::default(),
                    counts: IndexCounts::default(),
                },
                "upm_index_sweep"
            ),
            swept <- new_mutex!(IndexCounts::default(), "upm_index_swept"),
            candidates: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
        }))
    }

    /// Locks shard `i`, for the sweep and for readers of the counts.
    fn shard(&self, i: usize) -> KillableGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// Locks the entries of `domain` with `hash`, for an adviser; see the lock order above.
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal comes while the adviser waits for the shard.
    pub(crate) fn lock(&self, domain: Domain, hash: u64) -> Result<Index<'_>> {
        Ok(Index {
            shard: self.shards[shard_of(domain, hash)].lock_killable()?,
            owner: self,
            domain,
            hash,
        })
    }

    /// Locks the places of the process `mm_id` identifies.
    fn places(&self, mm_id: usize) -> Guard<'_, Places, MutexBackend> {
        self.places[places_shard_of(mm_id)].lock()
    }

    /// Whether the page of `mm` at `addr` is a candidate.
    pub(crate) fn has_candidate(&self, mm: &Mm, addr: usize) -> bool {
        let place = (mm_id(mm), addr);
        self.places(place.0).get(&place).is_some()
    }

    /// Drops the candidate of `mm` at `addr` if it was recorded with other contents than
    /// `hash` or in another domain: the page changed, and is about to be decided under the
    /// lock of its new contents. Takes only the old entry's shard lock, with no other held.
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal comes while the adviser waits for that shard.
    pub(crate) fn forget_changed_candidate(
        &self,
        mm: &Mm,
        addr: usize,
        domain: Domain,
        hash: u64,
    ) -> Result {
        let place = (mm_id(mm), addr);
        let Some(old) = self.places(place.0).get(&place).copied() else {
            return Ok(());
        };
        if old.content() != (domain, hash) {
            let mut shard = self.shards[old.shard()].lock_killable()?;
            self.unplace(place, &old);
            drop(shard.entries.remove(&old));
        }
        Ok(())
    }

    /// Drops the candidates of `mm` in `start..end` (the range is unmerged).
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal comes while the caller waits for a shard (the candidates
    /// left are dropped by the next lookup or sweep of their shards).
    pub(crate) fn forget_range(&self, mm: &Mm, start: usize, end: usize) -> Result {
        let id = mm_id(mm);
        loop {
            // The next place in the range, found and taken in one hold of the lock.
            let key = {
                let mut places = self.places(id);
                let Some(cursor) = places.cursor_lower_bound(&(id, start)) else {
                    return Ok(());
                };
                let place = *cursor.current().0;
                if place.0 != id || place.1 >= end {
                    return Ok(());
                }
                self.take_place_locked(&mut places, place)
            };
            if let Some(key) = key {
                // Its entry is stale now: drop it while nobody else can.
                let mut shard = self.shards[key.shard()].lock_killable()?;
                drop(shard.entries.remove(&key));
            }
        }
    }

    /// Takes the place of the candidate at `place` out of the map, and gives back the key of
    /// its entry, which is stale from now on.
    fn take_place(&self, place: (usize, usize)) -> Option<Key> {
        self.take_place_locked(&mut self.places(place.0), place)
    }

    fn take_place_locked(&self, places: &mut Places, place: (usize, usize)) -> Option<Key> {
        let key = places.remove(&place)?;
        self.candidates.fetch_sub(1, Ordering::Relaxed);
        Some(key)
    }

    /// Removes the place of the candidate at `place` if it is the entry `key`; false if the
    /// place moved on to a newer candidate (the entry at `key` is stale).
    fn unplace(&self, place: (usize, usize), key: &Key) -> bool {
        let mut places = self.places(place.0);
        if places.get(&place) != Some(key) {
            return false;
        }
        places.remove(&place);
        self.candidates.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Whether `key` is still the candidate of its place.
    fn is_placed(&self, mm: &Mm, addr: usize, key: &Key) -> bool {
        let place = (mm_id(mm), addr);
        self.places(place.0).get(&place) == Some(key)
    }

    /// Runs the next part of the sweep pass: looks at up to [`SWEEP_PER_RUN`] entries, drops
    /// those whose page or process is gone and counts the others. Returns how many merged
    /// pages were dropped and whether the pass is complete (its counts are then published).
    pub(crate) fn sweep(&self) -> (u64, bool) {
        let mut pass = self.sweep.lock();
        let (mut freed, mut budget) = (0, SWEEP_PER_RUN);
        loop {
            let mut stale: [Option<Key>; SWEEP_BATCH] = [None; SWEEP_BATCH];
            let mut found = 0;
            let mut shard = self.shard(pass.shard);
            let mut cursor = shard.entries.cursor_lower_bound(&pass.resume);
            let mut seen = 0;
            let mut shard_done = true;
            while let Some(c) = cursor {
                let (key, entry) = c.current();
                if seen == SWEEP_BATCH {
                    pass.resume = *key;
                    shard_done = false;
                    break;
                }
                seen += 1;
                // A merged page that nothing maps any more is no twin for anyone: its node
                // dies once the page is freed (a per-CPU folio batch may still hold it).
                // A merged page whose lock is held (it may be migrating, all its mappings
                // replaced for the while) is not gone; the next pass counts it.
                let gone = match entry {
                    Entry::Candidate { mm, addr } => {
                        !self.is_placed(mm, *addr, key) || !candidate_mapped(mm, *addr)
                    }
                    Entry::Merged(node) => matches!(node.try_mapcount(), Ok(Some(0)) | Err(_)),
                };
                if gone {
                    freed += u64::from(matches!(entry, Entry::Merged(_)));
                    stale[found] = Some(*key);
                    found += 1;
                } else {
                    drop(pass.counts.add(entry));
                }
                cursor = c.move_next();
            }
            for key in stale.iter().flatten() {
                drop(self.remove_from(&mut shard, key));
            }
            drop(shard);
            if shard_done {
                pass.resume = Key::default();
                pass.shard += 1;
                if pass.shard == SHARDS {
                    pass.shard = 0;
                    *self.swept.lock() = core::mem::take(&mut pass.counts);
                    return (freed, true);
                }
            }
            budget = budget.saturating_sub(seen);
            if budget == 0 {
                return (freed, false);
            }
            cond_resched();
        }
    }

    /// Takes the entry at `key` out of `shard`, and its place if it has it.
    fn remove_from(&self, shard: &mut Shard, key: &Key) -> Option<Entry> {
        let entry = shard.entries.remove(key)?;
        match &entry {
            Entry::Candidate { mm, addr } => {
                self.unplace((mm_id(mm), *addr), key);
            }
            Entry::Merged(_) => {
                self.nodes.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Some(entry)
    }

    /// Calls `visit` with each entry of the index and its key, shard by shard, each shard's
    /// entries in key order; stops when it returns false.
    fn for_each(&self, mut visit: impl FnMut(&Key, &Entry) -> bool) {
        for i in 0..SHARDS {
            let shard = self.shard(i);
            for (key, entry) in shard.entries.iter() {
                if let Entry::Candidate { mm, addr } = entry {
                    if !self.is_placed(mm, *addr, key) {
                        continue;
                    }
                }
                if !visit(key, entry) {
                    return;
                }
            }
        }
    }

    /// Counts the merged pages by how often they are mapped, now: a walk of the whole index,
    /// for privileged readers only.
    pub(crate) fn counts(&self) -> IndexCounts {
        let mut counts = IndexCounts::default();
        let mut busy = KVec::new();
        self.for_each(|_, entry| {
            if let Some(node) = counts.add(entry) {
                // Rare (a page moving right now); without memory it goes uncounted.
                let _ = busy.push(node, GFP_KERNEL);
            }
            true
        });
        counts.add_waiting(busy);
        counts
    }

    /// Calls `emit` with each domain that has entries and its counts, in domain order, until
    /// it returns false. Walks the whole index: for privileged readers only.
    pub(crate) fn domain_counts(&self, mut emit: impl FnMut(Domain, &IndexCounts) -> bool) {
        let mut domains: KVec<(Domain, IndexCounts, KVec<ARef<UpmNode>>)> = KVec::new();
        self.for_each(|key, entry| {
            let known = domains
                .iter()
                .position(|(domain, ..)| *domain == key.domain);
            let at = match known {
                Some(at) => at,
                None => {
                    let fresh = (key.domain, IndexCounts::default(), KVec::new());
                    if domains.push(fresh, GFP_KERNEL).is_err() {
                        return false;
                    }
                    domains.len() - 1
                }
            };
            let (_, counts, busy) = &mut domains[at];
            if let Some(node) = counts.add(entry) {
                let _ = busy.push(node, GFP_KERNEL);
            }
            true
        });
        domains.sort_unstable_by_key(|(domain, ..)| *domain);
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
        IndexCounts {
            candidates: self.candidates.load(Ordering::Relaxed),
            nodes: self.nodes.load(Ordering::Relaxed),
            ..*self.swept.lock()
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

impl Index<'_> {
    /// Up to `max` entries in the order they are to be tried (see [`Rank`]), from the one whose
    /// key ends in `from` or the next, with new references. Stale candidates met on the way
    /// are dropped.
    pub(crate) fn probe(&mut self, from: u64, max: usize) -> KVec<(Key, Probe)> {
        let mut probes = KVec::new();
        // Stale candidates met on the way are dropped; they count towards the entries looked
        // at, so that a look costs bounded work whatever the index holds.
        let mut stale: [Option<Key>; MAX_PROBES] = [None; MAX_PROBES];
        let mut looked = 0;
        let (first, content) = (self.key(from), (self.domain, self.hash));
        let mut cursor = self.shard.entries.cursor_lower_bound(&first);
        while let Some(c) = cursor {
            let (key, entry) = c.current();
            if key.content() != content || probes.len() == max {
                break;
            }
            if looked == MAX_PROBES + max {
                break;
            }
            looked += 1;
            // One allocation per look at most; a failed one only shortens the list of twins.
            if probes.is_empty() && probes.reserve(max, GFP_KERNEL).is_err() {
                break;
            }
            let probe = match entry {
                Entry::Merged(node) => Some(Probe::Merged(node.clone())),
                Entry::Candidate { mm, addr } if self.owner.is_placed(mm, *addr, key) => {
                    Some(Probe::Candidate(mm.clone(), *addr))
                }
                // Its page was advised again with other contents.
                Entry::Candidate { .. } => {
                    if let Some(free) = stale.iter_mut().find(|k| k.is_none()) {
                        *free = Some(*key);
                    }
                    None
                }
            };
            if let Some(probe) = probe {
                let _ = probes.push((*key, probe), GFP_KERNEL);
            }
            cursor = c.move_next();
        }
        for key in stale.iter().flatten() {
            drop(self.shard.entries.remove(key));
        }
        probes
    }

    /// Whether `node` has an entry.
    pub(crate) fn has_node(&mut self, node: &UpmNode) -> bool {
        let (first, content) = (self.key(0), (self.domain, self.hash));
        let mut cursor = self.shard.entries.cursor_lower_bound(&first);
        while let Some(c) = cursor {
            let (key, entry) = c.current();
            if key.content() != content {
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
        self.owner.remove_from(&mut self.shard, key)
    }

    /// Moves the merged page at `key`, which takes no more mappings, behind every other entry
    /// of its domain and hash: probed after the entries that still can, however many full ones
    /// there are.
    pub(crate) fn move_to_back(&mut self, key: &Key) {
        let Some(Entry::Merged(node)) = self.shard.entries.get(key) else {
            return;
        };
        let node = node.clone();
        self.replace(key, Rank::Full, Entry::Merged(node));
    }

    /// Turns the candidate at `key` into the merged page `node` (the pair just merged), ranked
    /// with the merged pages; gives `node` back if `key` has no candidate.
    pub(crate) fn promote(&mut self, key: &Key, node: ARef<UpmNode>) -> Result<(), ARef<UpmNode>> {
        let Some(Entry::Candidate { mm, addr }) = self.shard.entries.get(key) else {
            return Err(node);
        };
        let place = (mm_id(mm), *addr);
        self.owner.unplace(place, key);
        self.owner.nodes.fetch_add(1, Ordering::Relaxed);
        self.replace(key, Rank::Merged, Entry::Merged(node));
        Ok(())
    }

    /// Replaces the entry at `key` by `entry` under a new key of `rank`, behind the others of
    /// that rank, reusing its tree node: nothing to allocate, nothing that can fail.
    fn replace(&mut self, key: &Key, rank: Rank, entry: Entry) {
        let Some(old) = self.shard.entries.remove_node(key) else {
            return;
        };
        let new_key = self.next_key(rank);
        self.shard
            .entries
            .insert(old.into_reservation().into_node(new_key, entry));
    }

    fn next_key(&mut self, rank: Rank) -> Key {
        self.shard.next_seq += 1;
        self.key((rank as u64) << RANK_SHIFT | self.shard.next_seq)
    }

    /// The key of this domain and hash with `order`.
    fn key(&self, order: u64) -> Key {
        Key {
            domain: self.domain,
            hash: self.hash,
            order,
        }
    }

    /// Whether the entry at `key` is in the shard this view holds locked.
    fn holds(&self, key: &Key) -> bool {
        key.shard() == shard_of(self.domain, self.hash)
    }

    /// Adds a merged page.
    pub(crate) fn insert_merged(&mut self, node: ARef<UpmNode>) -> Result {
        let key = self.next_key(Rank::Merged);
        self.shard
            .entries
            .try_create_and_insert(key, Entry::Merged(node), GFP_KERNEL_ACCOUNT)?;
        self.owner.nodes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records the page of `mm` at `addr` as a candidate, replacing the candidate that address
    /// had.
    pub(crate) fn insert_candidate(&mut self, mm: &Mm, addr: usize) -> Result {
        let place = (mm_id(mm), addr);
        let content = (self.domain, self.hash);
        let recorded = move |old: &Key| old.content() == content;
        if self.owner.places(place.0).get(&place).is_some_and(recorded) {
            return Ok(());
        }
        let key = self.next_key(Rank::Candidate);
        // Allocated before the places lock, which nothing waits inside.
        let place_node = RBTreeNode::new(place, key, GFP_KERNEL_ACCOUNT)?;
        let entry = Entry::Candidate {
            mm: ARef::from(mm),
            addr,
        };
        let entry_node = RBTreeNode::new(key, entry, GFP_KERNEL_ACCOUNT)?;
        let old = {
            let mut places = self.owner.places(place.0);
            match places.get(&place).copied() {
                // Recorded by another thread of its process meanwhile.
                Some(old) if recorded(&old) => return Ok(()),
                old => {
                    if old.is_none() {
                        self.owner.candidates.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(places.insert(place_node));
                    old
                }
            }
        };
        // The old candidate is stale now: dropped here if it is in this shard, else by the
        // next lookup or sweep of its own shard.
        if let Some(old) = old.filter(|old| self.holds(old)) {
            drop(self.shard.entries.remove(&old));
        }
        drop(self.shard.entries.insert(entry_node));
        Ok(())
    }

    /// Drops the candidate of `mm` at `addr`, if any (the page was merged or unmerged).
    pub(crate) fn forget_candidate(&mut self, mm: &Mm, addr: usize) {
        let taken = self.owner.take_place((mm_id(mm), addr));
        if let Some(key) = taken.filter(|key| self.holds(key)) {
            drop(self.shard.entries.remove(&key));
        }
    }
}
