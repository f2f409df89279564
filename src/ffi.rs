// SPDX-License-Identifier: GPL-2.0

//! The one place where UPM touches `bindings::`.
//!
//! Everything here wraps a C interface of the kernel patch (`include/linux/upm.h`) or of core
//! kernel code in a small safe type. The rest of the module is safe Rust.
//!
//! Lifetimes follow the C rules: an [`Mm`] lives for one provider call, a [`MmapReadGuard`]
//! holds `mmap_lock` for reading, and a [`Vma`] borrows that guard, so no VMA outlives the lock
//! that keeps it alive. A [`PageRef`] owns one page reference.

use core::{
    marker::PhantomData,
    mem::offset_of,
    ptr::{self, NonNull},
};
use kernel::{
    bindings,
    ffi::{c_char, c_int, c_ulong},
    prelude::*,
    str::CStr,
    sync::Arc,
    types::{ARef, AlwaysRefCounted, Opaque},
};

/// Size of a base page in bytes.
pub(crate) const PAGE_SIZE: usize = kernel::page::PAGE_SIZE;

/// `MADV_UPM_MERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_MERGEABLE: i32 = bindings::MADV_UPM_MERGEABLE as i32;
/// `MADV_UPM_UNMERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_UNMERGEABLE: i32 = bindings::MADV_UPM_UNMERGEABLE as i32;

/// 64-bit xxHash with `seed`, the kernel's exported `xxh64()`.
pub(crate) fn xxh64(data: &[u8], seed: u64) -> u64 {
    // SAFETY: `data` is a valid slice for reads of `data.len()` bytes.
    unsafe { bindings::xxh64(data.as_ptr().cast(), data.len(), seed) }
}

/// A random 64-bit number (`get_random_u64()`), for keying the content hash.
pub(crate) fn random_u64() -> u64 {
    // SAFETY: No preconditions.
    unsafe { bindings::get_random_u64() }
}

/// Gives the CPU away if a reschedule is due.
pub(crate) fn cond_resched() {
    // SAFETY: Called from process context without spinlocks held (all callers are in the
    // madvise path or the sweep work).
    unsafe { bindings::cond_resched() }
}

/// Whether the current task has been sent a fatal signal.
pub(crate) fn fatal_signal_pending() -> bool {
    // SAFETY: `get_current()` is always valid in process context.
    unsafe { bindings::fatal_signal_pending(bindings::get_current()) }
}

/// Zero pages placed by KSM's zero-page path and still mapped, system wide.
pub(crate) fn zero_pages_mapped() -> u64 {
    // SAFETY: Reads an atomic counter; no preconditions.
    let n = unsafe { bindings::upm_zero_pages() };
    u64::try_from(n).unwrap_or(0)
}

/// An owned reference to a `struct page`.
///
/// # Invariants
///
/// `self.0` points to a `struct page` on which this object owns one reference.
pub(crate) struct PageRef(NonNull<bindings::page>);

// SAFETY: A page reference is not tied to a thread: `put_page()` may run anywhere.
unsafe impl Send for PageRef {}
// SAFETY: All `&self` methods only read the page.
unsafe impl Sync for PageRef {}

impl PageRef {
    /// Takes ownership of a reference the caller already holds.
    ///
    /// # Safety
    ///
    /// `page` must be valid and the caller must own one reference on it, which is transferred.
    unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        // INVARIANT: The caller transfers one reference.
        Self(page)
    }

    fn as_ptr(&self) -> *mut bindings::page {
        self.0.as_ptr()
    }

    /// xxh64 of the page contents with `seed`. The page may change underneath (it is not
    /// write-protected), so the hash only selects candidates; merging compares the full page.
    pub(crate) fn content_hash(&self, seed: u64) -> u64 {
        // SAFETY: The page is valid by the type invariant; the mapping is released below.
        let addr = unsafe { bindings::kmap_local_page(self.as_ptr()) };
        // SAFETY: `kmap_local_page()` maps `PAGE_SIZE` bytes at `addr`. The bytes are read by C
        // code only, so a concurrent writer cannot break Rust's aliasing rules.
        let hash = unsafe { bindings::xxh64(addr, PAGE_SIZE, seed) };
        // SAFETY: `addr` was returned by `kmap_local_page()` above, in this context.
        unsafe { bindings::kunmap_local(addr) };
        hash
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one reference, released exactly once here.
        unsafe { bindings::put_page(self.as_ptr()) };
    }
}

/// A UPM stable node: the kernel's record of one merged page (`struct upm_node`).
///
/// Held through [`ARef<UpmNode>`], which owns a reference on the node: the node's memory stays
/// valid however long the index keeps it, and once its page is gone it only reports so.
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

    /// How many page table entries map the node's page.
    pub(crate) fn mapcount(&self) -> Result<u32, NodeGone> {
        // SAFETY: The node is referenced by `&self`.
        node_result(unsafe { bindings::upm_node_mapcount(self.as_ptr()) })
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

/// An address space (`struct mm_struct`).
///
/// `&Mm` is valid for the duration of a provider call; [`ARef<Mm>`] holds it with `mmgrab()`,
/// which keeps the structure but not the address space: use [`Mm::mmget_not_zero`] for that.
#[repr(transparent)]
pub(crate) struct Mm(Opaque<bindings::mm_struct>);

// SAFETY: An mm may be referenced and locked from any thread.
unsafe impl Send for Mm {}
// SAFETY: As above.
unsafe impl Sync for Mm {}

// SAFETY: `mmgrab()`/`mmdrop()` keep the structure alive while a reference exists.
unsafe impl AlwaysRefCounted for Mm {
    fn inc_ref(&self) {
        // SAFETY: The existence of `&self` means the mm is referenced.
        unsafe { bindings::mmgrab(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller owns the reference it gives back.
        unsafe { bindings::mmdrop(obj.cast::<bindings::mm_struct>().as_ptr()) };
    }
}

impl Mm {
    /// # Safety
    ///
    /// `ptr` is a valid mm whose address space has users, for the lifetime `'a`.
    unsafe fn from_raw<'a>(ptr: NonNull<bindings::mm_struct>) -> &'a Self {
        // SAFETY: `Mm` is a transparent wrapper; the caller guarantees validity.
        unsafe { ptr.cast::<Self>().as_ref() }
    }

    fn as_raw(&self) -> *mut bindings::mm_struct {
        self.0.get()
    }

    /// A number that identifies this mm while it is referenced.
    pub(crate) fn id(&self) -> usize {
        self.as_raw() as usize
    }

    /// Pins the address space (`mmget_not_zero()`); `None` once the process exited.
    pub(crate) fn mmget_not_zero(&self) -> Option<MmWithUser<'_>> {
        // SAFETY: The mm structure is referenced by `&self`.
        if unsafe { bindings::mmget_not_zero(self.as_raw()) } {
            // INVARIANT: `mmget_not_zero()` took a user reference.
            Some(MmWithUser { mm: self })
        } else {
            None
        }
    }
}

/// An address space with a user reference (`mmget`), dropped with `mmput()`.
///
/// # Invariants
///
/// Owns one `mm_users` reference on `mm`.
pub(crate) struct MmWithUser<'a> {
    mm: &'a Mm,
}

impl MmWithUser<'_> {
    /// Takes `mmap_lock` for reading if nobody holds it for writing, without waiting.
    pub(crate) fn mmap_read_trylock(&self) -> Option<MmapReadGuard<'_>> {
        // SAFETY: The address space is pinned by the type invariant.
        if unsafe { bindings::mmap_read_trylock(self.mm.as_raw()) } {
            // INVARIANT: The lock was taken above.
            Some(MmapReadGuard { mm: self.mm })
        } else {
            None
        }
    }
}

impl Drop for MmWithUser<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one user reference, dropped once here. If it is
        // the last, the address space is torn down from a workqueue, not under our locks.
        unsafe { bindings::mmput_async(self.mm.as_raw()) };
    }
}

/// The address space of a provider call: its `mm_users` is held by the caller of the hook.
pub(crate) struct CallMm<'a>(&'a Mm);

impl<'a> CallMm<'a> {
    /// The address space.
    pub(crate) fn mm(&self) -> &'a Mm {
        self.0
    }

    /// Takes `mmap_lock` for reading; fails with `EINTR` on a fatal signal.
    pub(crate) fn mmap_read_lock(&self) -> Result<MmapReadGuard<'a>> {
        // SAFETY: The address space is pinned for the call by the type invariant.
        let ret = unsafe { bindings::mmap_read_lock_killable(self.0.as_raw()) };
        if ret != 0 {
            return Err(EINTR);
        }
        // INVARIANT: The lock was taken above.
        Ok(MmapReadGuard { mm: self.0 })
    }
}

/// `mmap_lock` held for reading.
///
/// # Invariants
///
/// The guard owns a read hold of `self.mm`'s `mmap_lock`, and the address space has users.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a Mm,
}

impl MmapReadGuard<'_> {
    /// The identity of the locked mm (see [`Mm::id`]).
    pub(crate) fn mm_id(&self) -> usize {
        self.mm.id()
    }

    /// The first VMA that ends after `addr`, like `find_vma()`.
    pub(crate) fn find_vma(&self, addr: usize) -> Option<Vma<'_>> {
        // SAFETY: The mm is valid and `mmap_lock` is held by the type invariant.
        let vma = unsafe { bindings::find_vma(self.mm.as_raw(), addr as c_ulong) };
        // INVARIANT: The VMA stays valid while the guard, which it borrows, holds the lock.
        NonNull::new(vma).map(|vma| Vma {
            vma,
            _guard: PhantomData,
        })
    }

    /// The VMA that contains `addr`, if any.
    pub(crate) fn vma_containing(&self, addr: usize) -> Option<Vma<'_>> {
        self.find_vma(addr).filter(|vma| vma.contains(addr))
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the guard holds the read lock, released once here.
        unsafe { bindings::mmap_read_unlock(self.mm.as_raw()) };
    }
}

/// What [`Vma::get_page`] found at an address.
pub(crate) enum Mapped {
    /// Nothing present: never faulted in, swapped out or migrating.
    Nothing,
    /// A small anonymous page that may be merged.
    Anon(PageRef),
    /// A KSM page: merged already; with its UPM node if UPM merged it.
    Ksm(Option<ARef<UpmNode>>),
    /// The zero page.
    Zero,
    /// A page of a large folio (THP), which must be split before it can merge.
    Large(PageRef),
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
    /// The stable node to merge into is gone (`ENOENT`) or poisoned (`EHWPOISON`).
    NodeGone,
    /// No memory for the kernel's bookkeeping (`ENOMEM`).
    NoMemory,
    /// The page is no longer mapped there, or another failure (`EFAULT`, ...).
    Gone,
}

fn merge_result(ret: c_int) -> Result<(), MergeError> {
    match ret {
        0 => Ok(()),
        r if r == bindings::UPM_PAGES_DIFFER as c_int => Err(MergeError::Differ),
        r if r == -(bindings::EAGAIN as c_int) => Err(MergeError::Busy),
        r if r == -(bindings::EBUSY as c_int) => Err(MergeError::Pinned),
        r if r == -(bindings::ENOENT as c_int) || r == -(bindings::EHWPOISON as c_int) => {
            Err(MergeError::NodeGone)
        }
        r if r == -(bindings::ENOMEM as c_int) => Err(MergeError::NoMemory),
        _ => Err(MergeError::Gone),
    }
}

/// A VMA, valid while `mmap_lock` is held by the guard it borrows.
///
/// # Invariants
///
/// `self.vma` points to a live VMA of the locked mm, and `mmap_lock` is held for reading.
pub(crate) struct Vma<'a> {
    vma: NonNull<bindings::vm_area_struct>,
    _guard: PhantomData<&'a MmapReadGuard<'a>>,
}

impl Vma<'_> {
    fn as_ptr(&self) -> *mut bindings::vm_area_struct {
        self.vma.as_ptr()
    }

    /// First address of the VMA.
    pub(crate) fn start(&self) -> usize {
        // SAFETY: The VMA is valid and its bounds are stable under `mmap_lock`.
        unsafe { (*self.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.vm_start }
    }

    /// First address after the VMA.
    pub(crate) fn end(&self) -> usize {
        // SAFETY: As in `start()`.
        unsafe { (*self.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.vm_end }
    }

    /// Whether `addr` is a page-aligned address inside the VMA.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr % PAGE_SIZE == 0 && self.start() <= addr && addr < self.end()
    }

    /// Whether UPM may merge pages of this VMA (KSM's rules; see `upm_vma_mergeable()`).
    pub(crate) fn is_mergeable(&self) -> bool {
        // SAFETY: The VMA is valid and `mmap_lock` is held, as the function requires.
        unsafe { bindings::upm_vma_mergeable(self.as_ptr()) }
    }

    /// What is mapped at `addr`, without faulting anything in. `Other` for an address outside
    /// the VMA or a VMA that [`Self::is_mergeable`] refuses.
    pub(crate) fn get_page(&self, addr: usize) -> Mapped {
        if !self.contains(addr) || !self.is_mergeable() {
            return Mapped::Other;
        }
        let mut page = ptr::null_mut();
        let mut node = ptr::null_mut();
        // SAFETY: The VMA is valid, locked and mergeable, and `addr` is inside it (checked
        // above); `page` and `node` are valid places for the results.
        let kind =
            unsafe { bindings::upm_get_page(self.as_ptr(), addr as c_ulong, &mut page, &mut node) };
        // SAFETY: A page, if returned (`UPM_PAGE_ANON`, `UPM_PAGE_LARGE`), carries one reference,
        // which the `PageRef` takes over.
        let page = NonNull::new(page).map(|p| unsafe { PageRef::from_raw(p) });
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

    /// Splits the large folio mapped at `addr` (`EINVAL` outside the VMA).
    pub(crate) fn split_large_page(&self, addr: usize) -> Result {
        if !self.contains(addr) {
            return Err(EINVAL);
        }
        // SAFETY: The VMA is valid and locked; `addr` is inside it (checked above).
        let ret = unsafe { bindings::upm_split_large_page(self.as_ptr(), addr as c_ulong) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }

    /// Write-protects `page` (mapped here) and `twin` (mapped in `twin_vma`), compares them in
    /// full and, if identical, makes `page` a KSM page with a new stable node that `twin`'s
    /// mapping shares. `twin_vma` belongs to this mm or to another whose `mmap_lock` is held.
    pub(crate) fn merge_pair(
        &self,
        page: &PageRef,
        twin_vma: &Vma<'_>,
        twin: &PageRef,
    ) -> Result<ARef<UpmNode>, MergeError> {
        let mut node = ptr::null_mut();
        // SAFETY: Both VMAs are valid and locked by the guards they borrow; both pages are
        // referenced; the C function checks that each page is mapped in its VMA and that the
        // VMAs are mergeable; `node` is a valid place for the result.
        merge_result(unsafe {
            bindings::upm_merge_pair(
                self.as_ptr(),
                page.as_ptr(),
                twin_vma.as_ptr(),
                twin.as_ptr(),
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
    pub(crate) fn merge_into(&self, page: &PageRef, node: &UpmNode) -> Result<(), MergeError> {
        // SAFETY: The VMA is valid and locked; `page` and `node` are referenced; the C function
        // checks that `page` is mapped in this VMA.
        merge_result(unsafe {
            bindings::upm_merge_page(self.as_ptr(), page.as_ptr(), node.as_ptr())
        })
    }

    /// Replaces the all-zero `page`, mapped at `addr`, by the shared zero page.
    pub(crate) fn merge_zero(&self, page: &PageRef, addr: usize) -> Result<(), MergeError> {
        if !self.contains(addr) {
            return Err(MergeError::Gone);
        }
        // SAFETY: The VMA is valid and locked; `page` is referenced; `addr` is inside the VMA.
        merge_result(unsafe {
            bindings::upm_merge_zero_page(self.as_ptr(), page.as_ptr(), addr as c_ulong)
        })
    }

    /// Gives every merged page in `start..end` a private copy (KSM's `break_ksm()`).
    pub(crate) fn unmerge(&self, start: usize, end: usize) -> Result {
        // SAFETY: The VMA is valid and locked; the C function checks that `start..end` lies
        // inside it.
        let ret =
            unsafe { bindings::upm_unmerge_range(self.as_ptr(), start as c_ulong, end as c_ulong) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }
}

/// The provider side of the madvise hook.
pub(crate) trait AdviseHandler: Send + Sync {
    /// Handles one madvise call on `start..end` of `mm` (page aligned, `start < end`).
    fn advise(&self, mm: &CallMm<'_>, start: usize, end: usize, advice: i32) -> Result;
}

#[repr(C)]
struct ProviderOps<T> {
    ops: bindings::upm_ops,
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
    /// Registers `handler` as the provider of the UPM advices (`EBUSY` if one exists).
    pub(crate) fn register(module: &'static ThisModule, handler: Arc<T>) -> Result<Self> {
        let ops = KBox::pin(
            ProviderOps {
                ops: bindings::upm_ops {
                    owner: module.as_ptr(),
                    advise: Some(Self::advise_callback),
                },
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `ops` is pinned and lives until `drop`, which unregisters it first.
        let ret = unsafe { bindings::upm_register_ops(&ops.ops) };
        if ret != 0 {
            return Err(Error::from_errno(ret));
        }
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
        let Some(mm) = NonNull::new(mm) else {
            return -(bindings::EINVAL as c_int);
        };
        // SAFETY: The kernel holds a user reference on `mm` during the call.
        let mm = CallMm(unsafe { Mm::from_raw(mm) });
        match provider.handler.advise(&mm, start, end, advice) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

impl<T: AdviseHandler> Drop for Provider<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by the type invariant. Returns after an RCU grace period, and calls
        // in flight hold our module, so nothing uses `self.ops` afterwards.
        unsafe { bindings::upm_unregister_ops(&self.ops.ops) };
    }
}

/// The handler of a sysfs directory's files.
pub(crate) trait SysfsHandler: Send + Sync {
    /// The file names; a file's index in this list identifies it in `show` and `store`.
    const FILES: &'static [SysfsFile];
    /// Writes the value of file `index` into `out`.
    fn show(&self, index: usize, out: &mut SysfsBuf<'_>) -> Result;
    /// Parses `input` and sets the value of writable file `index`.
    fn store(&self, index: usize, input: &str) -> Result;
}

/// One sysfs file.
pub(crate) struct SysfsFile {
    /// The file name.
    pub(crate) name: &'static CStr,
    /// Whether root may write it (a tunable).
    pub(crate) writable: bool,
}

/// The page-sized output buffer of a sysfs `show`.
pub(crate) struct SysfsBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for SysfsBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The lockdep class of our sysfs attributes (what `sysfs_attr_init()` gives C attributes).
struct AttrLockClass(kernel::types::Opaque<bindings::lock_class_key>);

// SAFETY: Lockdep only uses the key's address and synchronises its own use of the contents.
unsafe impl Sync for AttrLockClass {}

static SYSFS_ATTR_LOCK_CLASS: AttrLockClass = AttrLockClass(kernel::types::Opaque::uninit());

#[repr(C)]
struct SysfsAttr<T> {
    attr: bindings::kobj_attribute,
    index: usize,
    handler: Arc<T>,
}

/// A directory under `/sys/kernel/mm/` whose files are served by a [`SysfsHandler`].
///
/// # Invariants
///
/// `kobj` is a live kobject holding the files described by `attrs`, removed in `drop`.
pub(crate) struct SysfsDir<T: SysfsHandler> {
    kobj: NonNull<bindings::kobject>,
    _attrs: KVec<SysfsAttr<T>>,
    _table: KVec<*mut bindings::attribute>,
    _group: KBox<bindings::attribute_group>,
}

// SAFETY: The kobject and the tables are only touched by `drop`, from any thread.
unsafe impl<T: SysfsHandler> Send for SysfsDir<T> {}
// SAFETY: `&SysfsDir` gives no access to anything.
unsafe impl<T: SysfsHandler> Sync for SysfsDir<T> {}

impl<T: SysfsHandler> SysfsDir<T> {
    /// Creates `/sys/kernel/mm/<name>/` with the files `T::FILES`.
    pub(crate) fn create(name: &'static CStr, handler: Arc<T>) -> Result<Self> {
        let mut attrs = KVec::with_capacity(T::FILES.len(), GFP_KERNEL)?;
        for (index, file) in T::FILES.iter().enumerate() {
            // SAFETY: All-zero is a valid `kobj_attribute` (null pointers, no callbacks).
            let mut attr: bindings::kobj_attribute = unsafe { core::mem::zeroed() };
            attr.attr.name = file.name.as_char_ptr();
            attr.attr.mode = if file.writable { 0o644 } else { 0o444 };
            #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
            {
                // Dynamically allocated attributes need a static lockdep key.
                attr.attr.key = SYSFS_ATTR_LOCK_CLASS.0.get();
            }
            attr.show = Some(Self::show_callback);
            if file.writable {
                attr.store = Some(Self::store_callback);
            }
            attrs.push(
                SysfsAttr {
                    attr,
                    index,
                    handler: handler.clone(),
                },
                GFP_KERNEL,
            )?;
        }
        // `attrs` never grows again, so the addresses taken below stay valid.
        let mut table = KVec::with_capacity(attrs.len() + 1, GFP_KERNEL)?;
        for a in attrs.iter_mut() {
            table.push(&mut a.attr.attr as *mut bindings::attribute, GFP_KERNEL)?;
        }
        table.push(ptr::null_mut(), GFP_KERNEL)?;
        // SAFETY: All-zero is a valid `attribute_group`.
        let mut group: KBox<bindings::attribute_group> =
            KBox::new(unsafe { core::mem::zeroed() }, GFP_KERNEL)?;
        group.attrs = table.as_mut_ptr();

        // SAFETY: `mm_kobj` is created at boot and never freed; `name` is a valid C string.
        let kobj =
            unsafe { bindings::kobject_create_and_add(name.as_char_ptr(), bindings::mm_kobj) };
        let kobj = NonNull::new(kobj).ok_or(ENOMEM)?;
        // SAFETY: `kobj` is live; `group` and the attributes it points to live until `drop`,
        // which removes the files before freeing them.
        let ret = unsafe { bindings::sysfs_create_group(kobj.as_ptr(), &*group) };
        if ret != 0 {
            // SAFETY: Drops the reference `kobject_create_and_add()` returned.
            unsafe { bindings::kobject_put(kobj.as_ptr()) };
            return Err(Error::from_errno(ret));
        }
        // INVARIANT: Created above with the files of `attrs`.
        Ok(Self {
            kobj,
            _attrs: attrs,
            _table: table,
            _group: group,
        })
    }

    /// # Safety
    ///
    /// `attr` is the `attr` field of a `SysfsAttr<T>` of a live `SysfsDir<T>`.
    unsafe fn attr<'a>(attr: *mut bindings::kobj_attribute) -> &'a SysfsAttr<T> {
        // SAFETY: `attr` is the first field of the `#[repr(C)]` `SysfsAttr<T>`, alive while
        // the file exists, by the function's precondition.
        unsafe { &*attr.cast::<SysfsAttr<T>>() }
    }

    /// # Safety
    ///
    /// Called by sysfs only, with one of our attributes and a page-sized buffer.
    unsafe extern "C" fn show_callback(
        _kobj: *mut bindings::kobject,
        attr: *mut bindings::kobj_attribute,
        buf: *mut c_char,
    ) -> isize {
        // SAFETY: sysfs calls us with one of our attributes while its file exists.
        let attr = unsafe { Self::attr(attr) };
        // SAFETY: sysfs passes a zeroed, page-sized buffer that we may fill.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
        let mut out = SysfsBuf { buf, len: 0 };
        match attr.handler.show(attr.index, &mut out) {
            Ok(()) => out.len as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by sysfs only, with one of our attributes and `count` readable bytes at `buf`.
    unsafe extern "C" fn store_callback(
        _kobj: *mut bindings::kobject,
        attr: *mut bindings::kobj_attribute,
        buf: *const c_char,
        count: usize,
    ) -> isize {
        // SAFETY: sysfs calls us with one of our attributes while its file exists.
        let attr = unsafe { Self::attr(attr) };
        // SAFETY: sysfs passes `count` readable bytes.
        let bytes = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
        let result = core::str::from_utf8(bytes)
            .map_err(|_| EINVAL)
            .and_then(|s| attr.handler.store(attr.index, s.trim()));
        match result {
            Ok(()) => count as isize,
            Err(e) => e.to_errno() as isize,
        }
    }
}

impl<T: SysfsHandler> Drop for SysfsDir<T> {
    fn drop(&mut self) {
        // SAFETY: Live by the type invariant. `kobject_del()` removes the files now and waits
        // for running `show`/`store` calls, so the tables and our code may go afterwards; the
        // final `kobject_put()` may release the kobject later (CONFIG_DEBUG_KOBJECT_RELEASE
        // delays it), which no longer reaches us.
        unsafe {
            bindings::kobject_del(self.kobj.as_ptr());
            bindings::kobject_put(self.kobj.as_ptr());
        }
    }
}

/// The handler of a periodic work item.
pub(crate) trait PeriodicHandler: Send + Sync {
    /// Does one round of work; returns the delay until the next round in milliseconds.
    fn run(&self) -> u32;
}

#[repr(C)]
struct PeriodicInner<T> {
    /// Written by the workqueue code, hence `Opaque`.
    work: Opaque<bindings::delayed_work>,
    handler: Arc<T>,
}

/// A delayed work item on the system workqueue that re-arms itself; cancelled on drop.
///
/// # Invariants
///
/// `inner.work` was initialised with `INIT_DELAYED_WORK()` and is never moved (pinned box).
pub(crate) struct Periodic<T: PeriodicHandler> {
    inner: Pin<KBox<PeriodicInner<T>>>,
}

// SAFETY: The delayed work is designed to be queued and cancelled from any thread; the handler
// is `Send + Sync`.
unsafe impl<T: PeriodicHandler> Send for Periodic<T> {}
// SAFETY: `&Periodic` gives access to nothing but the `Sync` handler.
unsafe impl<T: PeriodicHandler> Sync for Periodic<T> {}

impl<T: PeriodicHandler> Periodic<T> {
    /// Starts running `handler` every so many milliseconds, first after `delay_ms`.
    pub(crate) fn start(handler: Arc<T>, delay_ms: u32) -> Result<Self> {
        let inner = KBox::pin(
            PeriodicInner {
                work: Opaque::uninit(),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `inner.work` is pinned storage owned by `inner`, not yet in use.
        unsafe { bindings::init_delayed_work(inner.work.get(), Some(Self::work_callback)) };
        // INVARIANT: Initialised above.
        let this = Self { inner };
        this.queue(delay_ms);
        Ok(this)
    }

    fn queue(&self, delay_ms: u32) {
        Self::queue_raw(&self.inner.work, delay_ms);
    }

    fn queue_raw(work: &Opaque<bindings::delayed_work>, delay_ms: u32) {
        let work = work.get();
        // SAFETY: `work` is an initialised delayed work that outlives its queueing (drop cancels
        // it synchronously); `system_wq` exists from boot on.
        unsafe {
            bindings::queue_delayed_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as c_int,
                bindings::system_wq,
                work,
                bindings::__msecs_to_jiffies(delay_ms),
            )
        };
    }

    /// # Safety
    ///
    /// Called by the workqueue only, with the work item of a live `Periodic<T>`.
    unsafe extern "C" fn work_callback(work: *mut bindings::work_struct) {
        // SAFETY: `work` is the `work` field of the `delayed_work` that is the first field of a
        // live `#[repr(C)]` `PeriodicInner<T>` (drop cancels the work before freeing it).
        let inner = unsafe {
            &*work
                .byte_sub(offset_of!(bindings::delayed_work, work))
                .cast::<PeriodicInner<T>>()
        };
        let delay_ms = inner.handler.run();
        Self::queue_raw(&inner.work, delay_ms);
    }
}

impl<T: PeriodicHandler> Drop for Periodic<T> {
    fn drop(&mut self) {
        let work = self.inner.work.get();
        // SAFETY: Initialised by the type invariant. Cancels a pending run, waits for a running
        // one and stops it from re-queueing itself.
        unsafe { bindings::cancel_delayed_work_sync(work) };
    }
}
