// SPDX-License-Identifier: GPL-2.0

//! UPM's own kernel interface (`include/linux/upm.h`): the provider registration, stable
//! nodes, merge domains and the merge primitives.
//!
//! C header: [`include/linux/upm.h`](srctree/include/linux/upm.h)
//!
//! The primitives need a VMA that KSM's rules allow merging in; [`MergeableVma`] carries that
//! proof, obtained by the checked conversion [`MergeableVma::from_vma`], as upstream's
//! `VmaRef::as_mixedmap_vma()` does for `VM_MIXEDMAP`. Every method that takes an address
//! checks that it lies in the VMA, so no safe caller can pass the C functions an address they
//! do not expect.

use super::{
    mm::{virt::VmaRef, MmWithUser},
    page::{UserPage, PAGE_SIZE},
};
use core::{mem::offset_of, ptr::NonNull};
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_int, c_ulong},
    prelude::*,
    sync::Arc,
    types::{ARef, AlwaysRefCounted, Opaque},
};

/// `MADV_UPM_MERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_MERGEABLE: i32 = bindings::MADV_UPM_MERGEABLE as i32;
/// `MADV_UPM_UNMERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_UNMERGEABLE: i32 = bindings::MADV_UPM_UNMERGEABLE as i32;

/// What a merge domain is named after (`enum upm_domain_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum DomainPolicy {
    /// One domain for the whole machine.
    Global = bindings::upm_domain_policy_UPM_DOMAIN_GLOBAL,
    /// The effective uid, as the initial user namespace sees it.
    Uid = bindings::upm_domain_policy_UPM_DOMAIN_UID,
    /// The user namespace.
    Userns = bindings::upm_domain_policy_UPM_DOMAIN_USERNS,
    /// The cgroup v2 ancestor at a configured depth.
    Cgroup = bindings::upm_domain_policy_UPM_DOMAIN_CGROUP,
}

/// The number of `mm`'s merge domain under `policy` (`upm_mm_domain()`): that of its owner
/// task.
///
/// # Errors
///
/// `ESRCH` if the mm has no owner any more (it is exiting).
pub(crate) fn mm_domain(mm: &MmWithUser, policy: DomainPolicy, cgroup_level: u32) -> Result<u64> {
    let mut id = 0;
    let level = c_int::try_from(cgroup_level).unwrap_or(c_int::MAX);
    // SAFETY: `mm` has users by its type; `id` is a valid place for the result.
    to_result(unsafe { bindings::upm_mm_domain(mm.as_raw(), policy as u32, level, &mut id) })?;
    Ok(id)
}

/// Flushes the LRU batches of every CPU (`upm_drain_lru()`): only after a primitive said
/// [`MergeError::Batched`], at most once per call.
pub(crate) fn drain_lru() {
    // SAFETY: No preconditions beyond process context, which every caller is in.
    unsafe { bindings::upm_drain_lru() }
}

/// Zero pages placed by KSM's zero-page path and still mapped, system wide.
pub(crate) fn zero_pages_mapped() -> u64 {
    // SAFETY: Reads an atomic counter; no preconditions.
    let n = unsafe { bindings::upm_zero_pages() };
    u64::try_from(n).unwrap_or(0)
}

/// A UPM stable node: the kernel's record of one merged page (`struct upm_node`).
///
/// Held through [`ARef<UpmNode>`], which owns a reference on the node: the node's memory stays
/// valid however long the index keeps it, and once its page is gone it only reports so.
///
/// # Invariants
///
/// A `&UpmNode` points at a `struct upm_node` on which its lender holds a reference (an
/// [`ARef<UpmNode>`], or the kernel for the length of a call), so the node's memory stays
/// valid while it is borrowed.
#[repr(transparent)]
pub(crate) struct UpmNode(Opaque<bindings::upm_node>);

// SAFETY: The C side protects the node with its own locks and reference count.
unsafe impl Send for UpmNode {}
// SAFETY: As above: every method is safe to call concurrently.
unsafe impl Sync for UpmNode {}

// SAFETY: `upm_node_get()` and `upm_node_put()` keep the node alive while a reference exists.
unsafe impl AlwaysRefCounted for UpmNode {
    fn inc_ref(&self) {
        // SAFETY: The existence of `&self` means the node is referenced.
        unsafe { bindings::upm_node_get(self.0.get()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns the reference it gives back.
        unsafe { bindings::upm_node_put(obj.cast::<bindings::upm_node>().as_ptr()) };
    }
}

/// Why a stable node can no longer take merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeGone {
    /// Its page was freed: nothing maps it any more.
    Freed,
    /// Its page has a memory error (hardware poison).
    Poisoned,
}

fn node_result(ret: c_int) -> Result<u32, NodeGone> {
    if ret == -(bindings::EHWPOISON as c_int) {
        Err(NodeGone::Poisoned)
    } else {
        u32::try_from(ret).map_err(|_| NodeGone::Freed)
    }
}

impl UpmNode {
    /// Takes over the reference a C function returned.
    ///
    /// # Safety
    ///
    /// `node` is a valid `upm_node` on which the caller owns one reference.
    unsafe fn from_raw(node: NonNull<bindings::upm_node>) -> ARef<Self> {
        // SAFETY: `UpmNode` is a transparent wrapper; the reference is transferred.
        unsafe { ARef::from_raw(node.cast()) }
    }

    fn as_ptr(&self) -> *mut bindings::upm_node {
        self.0.get()
    }

    /// A number that identifies this node while it is referenced.
    pub(crate) fn id(&self) -> usize {
        self.as_ptr() as usize
    }

    /// How many page table entries map the node's page, read under its folio lock so that a
    /// page being migrated is never counted with only some of its mappings; `None` if that
    /// lock is held right now. Never waits: callable under the index lock.
    ///
    /// # Errors
    ///
    /// [`NodeGone`] once the node's page has been freed.
    pub(crate) fn try_mapcount(&self) -> Result<Option<u32>, NodeGone> {
        // SAFETY: The node is referenced by `&self`; without `wait` the call never sleeps.
        let ret = unsafe { bindings::upm_node_mapcount(self.as_ptr(), false) };
        if ret == -(bindings::EBUSY as c_int) {
            return Ok(None);
        }
        node_result(ret).map(Some)
    }

    /// As [`Self::try_mapcount`], waiting for the folio lock. May sleep until a migration is
    /// done: never call it holding the index lock, which that lock's holders may need.
    pub(crate) fn mapcount_waiting(&self) -> Result<u32, NodeGone> {
        // SAFETY: The node is referenced by `&self`.
        node_result(unsafe { bindings::upm_node_mapcount(self.as_ptr(), true) })
    }

    /// The merge domain the node was created in (see [`mm_domain`]).
    pub(crate) fn domain(&self) -> u64 {
        // SAFETY: The node is referenced by `&self`.
        unsafe { bindings::upm_node_domain(self.as_ptr()) }
    }

    /// xxh64 of the node's page, whose contents never change, with `seed`.
    pub(crate) fn content_hash(&self, seed: u64) -> Result<u64, NodeGone> {
        let mut hash = 0;
        // SAFETY: The node is referenced by `&self`; `hash` is a valid place for the result.
        node_result(unsafe { bindings::upm_node_hash(self.as_ptr(), seed, &mut hash) })?;
        Ok(hash)
    }
}

/// Frees the kernel's stable nodes whose pages are gone; returns how many.
pub(crate) fn prune_stable_nodes() -> u64 {
    // SAFETY: Called from process context without locks held (the sweep work).
    u64::from(unsafe { bindings::upm_prune() } as u32)
}

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
    /// and [`drain_lru`] may free it.
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

/// Gives every merged page in `start..end` of `vma` a private copy (KSM's `break_ksm()`).
/// Works on any VMA: one may have changed (mprotect, userfaultfd...) since it was merged.
///
/// # Errors
///
/// `EINVAL` for a range that is not page aligned or not inside `vma`, `ENOMEM` when a
/// private copy cannot be made, `ERESTARTSYS` when a signal is pending; the pages before
/// the failure are unmerged.
pub(crate) fn unmerge_range(vma: &VmaRef, start: usize, end: usize) -> Result {
    // SAFETY: The VMA is valid and its mm's `mmap_lock` held by `VmaRef`'s invariants; the C
    // function checks that `start..end` lies inside the VMA.
    to_result(unsafe {
        bindings::upm_unmerge_range(vma.as_ptr(), start as c_ulong, end as c_ulong)
    })
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

    /// Write-protects `page` (mapped here) and `twin` (mapped in `twin_vma`, of this mm or of
    /// another whose `mmap_lock` is held), compares them in full and, if identical, makes
    /// `page` (or, with `fresh_frame`, a fresh copy of it that replaces both mappings) a KSM
    /// page with a new stable node of `domain` that `twin`'s mapping shares.
    pub(crate) fn merge_pair(
        &self,
        page: &UserPage,
        twin_vma: &MergeableVma,
        twin: &UserPage,
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
                page.as_ptr(),
                twin_vma.as_ptr(),
                twin.as_ptr(),
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

/// The provider side of the madvise hook.
pub(crate) trait AdviseHandler: Send + Sync {
    /// Handles one madvise call on `start..end` of `mm` (page aligned, `start < end`).
    fn advise(&self, mm: &MmWithUser, start: usize, end: usize, advice: i32) -> Result;
}

/// The C structure the kernel calls through, and the handler it leads to.
#[repr(C)]
struct ProviderOps<T> {
    /// Read by the kernel while registered: `Opaque`, never borrowed by Rust.
    ops: Opaque<bindings::upm_ops>,
    handler: Arc<T>,
}

/// Registration of a madvise provider; unregisters on drop.
///
/// # Invariants
///
/// `self.ops` is registered with `upm_register_ops()` until `drop`.
pub(crate) struct Provider<T: AdviseHandler> {
    ops: Pin<KBox<ProviderOps<T>>>,
}

// SAFETY: The C structure is only read by the kernel after registration; the handler is
// `Send + Sync`, and the module pointer refers to a module that outlives the registration.
unsafe impl<T: AdviseHandler> Send for Provider<T> {}
// SAFETY: `&Provider` gives access to nothing but the `Sync` handler.
unsafe impl<T: AdviseHandler> Sync for Provider<T> {}

impl<T: AdviseHandler> Provider<T> {
    /// Registers `handler` as the provider of the UPM advices.
    ///
    /// # Errors
    ///
    /// `EBUSY` if a provider is registered already, `ENOMEM`.
    pub(crate) fn register(module: &'static ThisModule, handler: Arc<T>) -> Result<Self> {
        let ops = KBox::pin(
            ProviderOps {
                ops: Opaque::new(bindings::upm_ops {
                    owner: module.as_ptr(),
                    advise: Some(Self::advise_callback),
                }),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `ops` is pinned and lives until `drop`, which unregisters it first.
        to_result(unsafe { bindings::upm_register_ops(ops.ops.get()) })?;
        // INVARIANT: Registered above.
        Ok(Self { ops })
    }

    /// # Safety
    ///
    /// Called by the kernel only: `ops` is the `ops` field of a registered `ProviderOps<T>` and
    /// `mm` is referenced for the duration of the call.
    unsafe extern "C" fn advise_callback(
        ops: *const bindings::upm_ops,
        mm: *mut bindings::mm_struct,
        start: c_ulong,
        end: c_ulong,
        advice: c_int,
    ) -> c_int {
        // SAFETY: `ops` is the first field of a `#[repr(C)]` `ProviderOps<T>`, which stays alive
        // while registered (the caller holds the owner module, whose exit unregisters it).
        let provider = unsafe {
            &*ops
                .byte_sub(offset_of!(ProviderOps<T>, ops))
                .cast::<ProviderOps<T>>()
        };
        if mm.is_null() {
            return -(bindings::EINVAL as c_int);
        }
        // SAFETY: The kernel holds a user reference on `mm` for the duration of the call.
        let mm = unsafe { MmWithUser::from_raw(mm) };
        match provider.handler.advise(mm, start, end, advice) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

impl<T: AdviseHandler> Drop for Provider<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by the type invariant. Returns after an RCU grace period, and calls
        // in flight hold our module, so nothing uses `self.ops` afterwards.
        unsafe { bindings::upm_unregister_ops(self.ops.ops.get()) };
    }
}
