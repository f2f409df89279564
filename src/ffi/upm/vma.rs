// SPDX-License-Identifier: GPL-2.0

//! The merge primitives, on a VMA that KSM's rules allow merging in.
//!
//! C header: [`include/linux/upm.h`](srctree/include/linux/upm.h)
//!
//! [`MergeableVma`] carries the proof that the VMA may merge, obtained by the checked
//! conversion [`MergeableVma::from_vma`], as upstream's `VmaRef::as_mixedmap_vma()` does for
//! `VM_MIXEDMAP`. Every method that takes an address checks that it lies in the VMA, so no
//! safe caller can pass the C functions an address they do not expect.

use super::UpmNode;
use crate::ffi::{
    mm::virt::VmaRef,
    page::{UserPage, PAGE_SIZE},
};
use core::ptr::NonNull;
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_int, c_ulong},
    prelude::*,
    types::ARef,
};

/// What [`MergeableVma::get_page`] found at an address.
pub(crate) enum Mapped {
    /// Nothing present: never faulted in, swapped out or migrating.
    Nothing,
    /// A small anonymous page that may be merged.
    Anon(ARef<UserPage>),
    /// A KSM page: merged already; with its UPM node if UPM merged it.
    Ksm(Option<ARef<UpmNode>>),
    /// The zero page.
    Zero,
    /// A page of a large folio (THP), which must be split before it can merge.
    Large(ARef<UserPage>),
    /// Not an anonymous page, or lazily freed (`MADV_FREE`), or outside the VMA.
    Other,
}

/// Why a merge primitive did not merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MergeError {
    /// Compared under write protection: the contents differ.
    Differ,
    /// The page lock was contended (`EAGAIN`).
    Busy,
    /// The page has references its mappings do not explain, e.g. a GUP pin (`EBUSY`).
    Pinned,
    /// Like `Pinned`, but the page is off the LRU: a per-CPU LRU batch may hold the reference,
    /// and [`drain_lru`](super::drain_lru) may free it.
    Batched,
    /// The stable node to merge into is gone (`ENOENT`) or poisoned (`EHWPOISON`).
    NodeGone,
    /// The stable node to merge into has KSM's `max_page_sharing` mappings: the page needs
    /// another node of the same contents (`UPM_NODE_FULL`).
    NodeFull,
    /// No memory for the kernel's bookkeeping (`ENOMEM`).
    NoMemory,
    /// The page is no longer mapped there, or another failure (`EFAULT`, ...).
    Gone,
}

fn merge_result(ret: c_int) -> Result<(), MergeError> {
    match ret {
        0 => Ok(()),
        r if r == bindings::UPM_PAGES_DIFFER as c_int => Err(MergeError::Differ),
        r if r == bindings::UPM_PAGE_BATCHED as c_int => Err(MergeError::Batched),
        r if r == bindings::UPM_NODE_FULL as c_int => Err(MergeError::NodeFull),
        r if r == -(bindings::EAGAIN as c_int) => Err(MergeError::Busy),
        r if r == -(bindings::EBUSY as c_int) => Err(MergeError::Pinned),
        r if r == -(bindings::ENOENT as c_int) || r == -(bindings::EHWPOISON as c_int) => {
            Err(MergeError::NodeGone)
        }
        r if r == -(bindings::ENOMEM as c_int) => Err(MergeError::NoMemory),
        _ => Err(MergeError::Gone),
    }
}

/// Whether `addr` is a page-aligned address inside `vma`.
pub(crate) fn vma_contains(vma: &VmaRef, addr: usize) -> bool {
    addr % PAGE_SIZE == 0 && vma.start() <= addr && addr < vma.end()
}

/// A VMA whose pages UPM may merge (KSM's rules, `upm_vma_mergeable()`).
///
/// # Invariants
///
/// As [`VmaRef`], and `upm_vma_mergeable()` returned true for it under the same hold of the
/// mmap read lock (the flags it checks only change under the write lock).
#[repr(transparent)]
pub(crate) struct MergeableVma {
    vma: VmaRef,
}

impl core::ops::Deref for MergeableVma {
    type Target = VmaRef;

    fn deref(&self) -> &VmaRef {
        &self.vma
    }
}

impl MergeableVma {
    /// The VMA as a [`MergeableVma`], if KSM's rules allow merging in it.
    pub(crate) fn from_vma(vma: &VmaRef) -> Option<&Self> {
        // SAFETY: The VMA is valid and locked by `VmaRef`'s invariants.
        if unsafe { bindings::upm_vma_mergeable(vma.as_ptr()) } {
            // SAFETY: `MergeableVma` is a transparent wrapper; checked just above.
            Some(unsafe { &*(vma as *const VmaRef).cast::<Self>() })
        } else {
            None
        }
    }

    /// Whether `addr` is a page-aligned address inside the VMA.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        vma_contains(&self.vma, addr)
    }

    /// What is mapped at `addr`, without faulting anything in; `Other` outside the VMA.
    pub(crate) fn get_page(&self, addr: usize) -> Mapped {
        if !self.contains(addr) {
            return Mapped::Other;
        }
        let mut page = core::ptr::null_mut();
        let mut node = core::ptr::null_mut();
        // SAFETY: The VMA is valid, locked and mergeable by the type invariants, and `addr` is
        // inside it (checked above); `page` and `node` are valid places for the results.
        let kind =
            unsafe { bindings::upm_get_page(self.as_ptr(), addr as c_ulong, &mut page, &mut node) };
        // SAFETY: A page, if returned (`UPM_PAGE_ANON`, `UPM_PAGE_LARGE`), carries one reference,
        // which the `ARef` takes over.
        let page = NonNull::new(page).map(|p| unsafe { UserPage::from_raw(p) });
        // SAFETY: A node, if returned (`UPM_PAGE_KSM`), carries one reference, which the `ARef`
        // takes over.
        let node = NonNull::new(node).map(|n| unsafe { UpmNode::from_raw(n) });
        match (kind, page) {
            (bindings::upm_page_kind_UPM_PAGE_ANON, Some(page)) => Mapped::Anon(page),
            (bindings::upm_page_kind_UPM_PAGE_LARGE, Some(page)) => Mapped::Large(page),
            (bindings::upm_page_kind_UPM_PAGE_KSM, _) => Mapped::Ksm(node),
            (bindings::upm_page_kind_UPM_PAGE_ZERO, _) => Mapped::Zero,
            (bindings::upm_page_kind_UPM_PAGE_OTHER, _) => Mapped::Other,
            _ => Mapped::Nothing,
        }
    }

    /// Splits the large folio mapped at `addr`.
    ///
    /// # Errors
    ///
    /// `EINVAL` outside the VMA, or what `split_folio()` returns (`EBUSY` when the folio has
    /// extra references, `EAGAIN`, `ENOMEM`).
    pub(crate) fn split_large_page(&self, addr: usize) -> Result {
        if !self.contains(addr) {
            return Err(EINVAL);
        }
        // SAFETY: The VMA is valid, locked and mergeable; `addr` is inside it (checked above).
        to_result(unsafe { bindings::upm_split_large_page(self.as_ptr(), addr as c_ulong) })
    }

    /// Write-protects `kept` (mapped here) and `replaced` (mapped in `replaced_vma`, of this mm
    /// or of another whose `mmap_lock` is held), compares them in full and, if identical, makes
    /// `kept` (or, with `fresh_frame`, a fresh copy of it that replaces both mappings) a KSM
    /// page with a new stable node of `domain` that `replaced`'s mapping shares.
    ///
    /// # Errors
    ///
    /// The [`MergeError`] that says why both pages stay as they were.
    pub(crate) fn merge_pair(
        &self,
        kept: &UserPage,
        replaced_vma: &MergeableVma,
        replaced: &UserPage,
        domain: u64,
        fresh_frame: bool,
    ) -> Result<ARef<UpmNode>, MergeError> {
        let flags = if fresh_frame {
            bindings::UPM_MERGE_FRESH_FRAME
        } else {
            0
        };
        let mut node = core::ptr::null_mut();
        // SAFETY: Both VMAs are valid, mergeable and locked by their type invariants; both
        // pages are referenced; the C function checks that each page is mapped in its VMA;
        // `node` is a valid place for the result.
        merge_result(unsafe {
            bindings::upm_merge_pair(
                self.as_ptr(),
                kept.as_ptr(),
                replaced_vma.as_ptr(),
                replaced.as_ptr(),
                domain,
                flags,
                &mut node,
            )
        })?;
        // SAFETY: On success the function returned the new node with one reference for us.
        NonNull::new(node)
            .map(|n| unsafe { UpmNode::from_raw(n) })
            .ok_or(MergeError::Gone)
    }

    /// Replaces `page` by the page of `node` if their full contents are equal under write
    /// protection.
    ///
    /// # Errors
    ///
    /// The [`MergeError`] that says why the page stays as it was.
    pub(crate) fn merge_into(&self, page: &UserPage, node: &UpmNode) -> Result<(), MergeError> {
        // SAFETY: The VMA is valid, mergeable and locked; `page` and `node` are referenced; the
        // C function checks that `page` is mapped in this VMA.
        merge_result(unsafe {
            bindings::upm_merge_page(self.as_ptr(), page.as_ptr(), node.as_ptr())
        })
    }

    /// Replaces the all-zero `page`, mapped at `addr`, by the shared zero page.
    ///
    /// # Errors
    ///
    /// The [`MergeError`] that says why the page stays as it was (it is not all zeroes under
    /// write protection, it has extra references...).
    pub(crate) fn merge_zero(&self, page: &UserPage, addr: usize) -> Result<(), MergeError> {
        if !self.contains(addr) {
            return Err(MergeError::Gone);
        }
        // SAFETY: The VMA is valid, mergeable and locked; `page` is referenced; `addr` is
        // inside the VMA (checked above), and the C function checks that `page` is mapped.
        merge_result(unsafe {
            bindings::upm_merge_zero_page(self.as_ptr(), page.as_ptr(), addr as c_ulong)
        })
    }
}
