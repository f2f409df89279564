// SPDX-License-Identifier: GPL-2.0

//! The content-hash tree of stable pages.
//!
//! Every stable page (a KSM page that UPM promoted) is kept in one red-black tree keyed by the
//! xxh64 of its contents and, to tell pages with equal hashes apart, by the page's identity. A
//! hash match only makes a page a candidate: merging always compares the full page under write
//! protection, so a hash collision costs a compare and never corrupts memory.
//!
//! The tree owns one reference on each stable page. A stable page that nothing maps any more
//! (its last sharer wrote to it, unmapped it or exited) is an orphan: it is dropped lazily when
//! a lookup meets it and by the periodic sweep.
//!
//! # Lock order
//!
//! 1. `mmap_lock` of the advised mm (read), held by `merge.rs` for a batch of pages;
//! 2. [`StableTree::promotion`], a mutex held while a page is promoted to a stable page;
//! 3. the folio lock and the page table lock, inside the C merge primitives;
//! 4. [`StableTree::nodes`], a spinlock.
//!
//! The tree lock is innermost and never held across anything that can sleep: under it we only
//! walk the tree, read page counts and take page references. Nodes are allocated before taking
//! it and orphans are freed (`put_page()`) after dropping it.
//!
//! Merging into an existing stable page needs only the tree lock, so advisers in different
//! processes merge in parallel. Promotion is serialised by the promotion mutex, and whoever
//! holds it looks the hash up again first: two advisers of the same new contents thus end up
//! with one stable page, not two.

use crate::ffi::{PageRef, StablePage};
use kernel::{
    new_mutex, new_spinlock,
    prelude::*,
    rbtree::{RBTree, RBTreeNode, RBTreeNodeReservation},
    sync::{
        lock::{mutex::MutexBackend, Guard},
        Mutex, SpinLock,
    },
};

/// Content hash, then page identity.
type Key = (u64, usize);

/// Orphans freed per hold of the tree lock by the sweep.
const SWEEP_BATCH: usize = 32;

/// What the tree holds right now, for the sysfs counters.
#[derive(Default)]
pub(crate) struct TreeCounts {
    /// Stable pages mapped by two or more page table entries.
    pub(crate) shared: u64,
    /// Sum over stable pages of (mappings - 1): the pages saved.
    pub(crate) sharing: u64,
    /// Stable pages mapped exactly once.
    pub(crate) unshared: u64,
    /// Nodes in the tree, orphans not yet swept included.
    pub(crate) nodes: u64,
}

/// The content-hash tree.
#[pin_data]
pub(crate) struct StableTree {
    #[pin]
    nodes: SpinLock<RBTree<Key, StablePage>>,
    #[pin]
    promotion: Mutex<()>,
}

/// Whether the tree's reference is the only thing keeping `page` alive.
fn is_orphan(page: &PageRef) -> bool {
    page.mapcount() == 0 && page.refcount() == 1
}

/// Whether `page` is mapped nowhere but still referenced from elsewhere: most often by a
/// per-CPU folio batch (munlock at exit puts every mlocked page in one), or by an adviser
/// about to merge into it.
fn is_unmapped_but_held(page: &PageRef) -> bool {
    page.mapcount() == 0 && page.refcount() > 1
}

impl StableTree {
    /// An empty tree.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            nodes <- new_spinlock!(RBTree::new(), "upm_stable_tree"),
            promotion <- new_mutex!((), "upm_promotion"),
        })
    }

    /// Serialises promotions; see the lock order above.
    pub(crate) fn lock_promotion(&self) -> Guard<'_, (), MutexBackend> {
        self.promotion.lock()
    }

    /// The `nth` (from 0) live stable page whose contents hash to `hash`, with a new reference.
    ///
    /// An orphan met on the way is unlinked and freed.
    pub(crate) fn candidate(&self, hash: u64, nth: usize) -> Option<StablePage> {
        let mut orphan_key = None;
        let mut orphan: Option<RBTreeNode<Key, StablePage>> = None;
        let found = {
            let mut nodes = self.nodes.lock();
            let mut found = None;
            let mut seen = 0;
            let mut cursor = nodes.cursor_lower_bound(&(hash, 0));
            while let Some(c) = cursor {
                let (key, stable) = c.current();
                if key.0 != hash {
                    break;
                }
                if is_orphan(stable.page()) {
                    orphan_key.get_or_insert(*key);
                } else if seen == nth {
                    found = Some(stable.clone_ref());
                    break;
                } else {
                    seen += 1;
                }
                cursor = c.move_next();
            }
            if let Some(key) = orphan_key {
                orphan = nodes.remove_node(&key);
            }
            found
        };
        // Frees the orphan, if any, now that the lock is dropped.
        drop(orphan);
        found
    }

    /// Adds a freshly promoted stable page whose contents hash to `hash`.
    pub(crate) fn insert(&self, hash: u64, stable: StablePage) -> Result {
        let reservation = RBTreeNodeReservation::new(GFP_KERNEL)?;
        let node = reservation.into_node((hash, stable.page().id()), stable);
        // A page is promoted once, so its key cannot be in the tree yet.
        let old = self.nodes.lock().insert(node);
        drop(old);
        Ok(())
    }

    /// Frees every orphan; returns how many.
    ///
    /// Unmapped pages that something else still references are not orphans yet. If there are
    /// any, the per-CPU folio batches are drained (as ksmd does before each scan) and the tree
    /// swept again, so that pages which a batch held are freed now and not left forever on an
    /// idle CPU.
    pub(crate) fn sweep(&self) -> usize {
        let (freed, held) = self.sweep_pass();
        if held == 0 {
            return freed;
        }
        crate::ffi::drain_page_batches();
        freed + self.sweep_pass().0
    }

    /// Frees every orphan; returns how many, and how many unmapped pages are still held.
    fn sweep_pass(&self) -> (usize, usize) {
        let mut freed = 0;
        let mut held = 0;
        let mut resume = (0, 0);
        loop {
            let mut batch: [Option<RBTreeNode<Key, StablePage>>; SWEEP_BATCH] =
                [const { None }; SWEEP_BATCH];
            let mut taken = 0;
            let mut done = true;
            {
                let mut nodes = self.nodes.lock();
                let mut cursor = nodes.cursor_lower_bound(&resume);
                while let Some(c) = cursor {
                    let key = *c.current().0;
                    if taken == SWEEP_BATCH {
                        resume = key;
                        done = false;
                        break;
                    }
                    if is_orphan(c.current().1.page()) {
                        let (next, node) = c.remove_current();
                        batch[taken] = Some(node);
                        taken += 1;
                        // `remove_current` moves back when it removed the last node.
                        cursor = next.filter(|n| *n.current().0 > key);
                    } else {
                        held += usize::from(is_unmapped_but_held(c.current().1.page()));
                        cursor = c.move_next();
                    }
                }
            }
            freed += taken;
            drop(batch);
            if done {
                return (freed, held);
            }
            crate::ffi::cond_resched();
        }
    }

    /// Counts the stable pages by how often they are mapped.
    pub(crate) fn counts(&self) -> TreeCounts {
        let nodes = self.nodes.lock();
        let mut counts = TreeCounts::default();
        for stable in nodes.values() {
            counts.nodes += 1;
            match stable.page().mapcount() {
                0 => {}
                1 => counts.unshared += 1,
                n => {
                    counts.shared += 1;
                    counts.sharing += u64::from(n) - 1;
                }
            }
        }
        counts
    }
}
