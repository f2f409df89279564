// SPDX-License-Identifier: GPL-2.0

//! Cumulative activity counters and tunables.
//!
//! Counters of the current state (pages shared, sharing...) are not kept here: they are
//! computed from the stable tree when read, so they cannot drift from the truth.

use crate::domain::DEFAULT_POLICY;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A monotonic event counter.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds `n` events.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one event.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// The number of events so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a page in an advised range was not merged.
#[derive(Clone, Copy)]
pub(crate) enum Skip {
    /// Not present: never faulted in, swapped out or migrating.
    NotPresent,
    /// In a VMA UPM cannot merge (shared, hugetlb, PFN/IO, VM_MERGEABLE, no anon_vma).
    Vma,
    /// Part of a large folio that was not split.
    Large,
    /// Extra references (GUP pin, O_DIRECT): never write-protected.
    Pinned,
    /// Page lock contended.
    Busy,
    /// Unmapped or changed under us, or not an anonymous page. Keep it last.
    Other,
}

impl Skip {
    /// How many reasons there are, one counter each in [`Stats`]: `Other` stays the last.
    const COUNT: usize = Skip::Other as usize + 1;
}

/// Cumulative counters, all monotonic.
pub(crate) struct Stats {
    /// Pages looked at by MADV_UPM_MERGEABLE.
    pub(crate) pages_scanned: Counter,
    /// Pages replaced by an existing stable page.
    pub(crate) pages_merged: Counter,
    /// Pages promoted to new stable pages.
    pub(crate) pages_promoted: Counter,
    /// All-zero pages replaced by the zero page.
    pub(crate) pages_zero_merged: Counter,
    /// Pages that were a KSM page or the zero page already.
    pub(crate) pages_already_merged: Counter,
    /// Pages skipped, by reason (indexed by `Skip`).
    skipped: [Counter; Skip::COUNT],
    /// Candidates whose hash matched but whose contents differed.
    pub(crate) hash_collisions: Counter,
    /// MADV_UPM_MERGEABLE calls.
    pub(crate) madvise_calls: Counter,
    /// MADV_UPM_UNMERGEABLE calls.
    pub(crate) unmerge_calls: Counter,
    /// Orphaned stable pages freed.
    pub(crate) stable_pages_freed: Counter,
    /// Complete passes of the sweep over the index: what tests wait for, not a time.
    pub(crate) sweep_passes: Counter,
}

impl Stats {
    const fn new() -> Self {
        Self {
            pages_scanned: Counter::new(),
            pages_merged: Counter::new(),
            pages_promoted: Counter::new(),
            pages_zero_merged: Counter::new(),
            pages_already_merged: Counter::new(),
            skipped: [const { Counter::new() }; Skip::COUNT],
            hash_collisions: Counter::new(),
            madvise_calls: Counter::new(),
            unmerge_calls: Counter::new(),
            stable_pages_freed: Counter::new(),
            sweep_passes: Counter::new(),
        }
    }

    /// Counts `n` pages skipped for `reason`.
    pub(crate) fn skip(&self, reason: Skip, n: u64) {
        self.skipped[reason as usize].add(n);
    }

    /// Pages skipped for `reason` so far.
    pub(crate) fn skipped(&self, reason: Skip) -> u64 {
        self.skipped[reason as usize].get()
    }

    /// Pages skipped for any reason so far.
    pub(crate) fn skipped_total(&self) -> u64 {
        self.skipped.iter().map(Counter::get).sum()
    }
}

/// The counters. Global because they outlive any one provider call and are read by sysfs.
pub(crate) static STATS: Stats = Stats::new();

/// Tunables, set through sysfs.
pub(crate) struct Tunables {
    /// When false, MADV_UPM_MERGEABLE is accepted but merges nothing (for A/B measurements).
    pub(crate) run: AtomicBool,
    /// Replace all-zero pages by the shared zero page.
    pub(crate) use_zero_pages: AtomicBool,
    /// Split large folios (THP) in advised ranges so that their pages can merge.
    pub(crate) split_thp: AtomicBool,
    /// Period of the orphan sweep, in milliseconds.
    pub(crate) sweep_millisecs: AtomicU32,
    /// A new merged page is a fresh copy, not the first adviser's frame.
    pub(crate) fresh_frame: AtomicBool,
    /// What merge domains are named after: an index in [`crate::domain::POLICIES`].
    pub(crate) domain_policy: AtomicU32,
    /// For the `cgroup` policy: the depth of the cgroup v2 ancestor that names a domain.
    pub(crate) domain_cgroup_level: AtomicU32,
}

/// The tunables, with their defaults.
pub(crate) static TUNABLES: Tunables = Tunables {
    run: AtomicBool::new(true),
    use_zero_pages: AtomicBool::new(true),
    split_thp: AtomicBool::new(true),
    sweep_millisecs: AtomicU32::new(1000),
    fresh_frame: AtomicBool::new(false),
    domain_policy: AtomicU32::new(DEFAULT_POLICY),
    domain_cgroup_level: AtomicU32::new(1),
};

/// Reads a boolean tunable.
pub(crate) fn enabled(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
