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
};

/// Size of a base page in bytes.
pub(crate) const PAGE_SIZE: usize = kernel::page::PAGE_SIZE;

/// `MADV_UPM_MERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_MERGEABLE: i32 = bindings::MADV_UPM_MERGEABLE as i32;
/// `MADV_UPM_UNMERGEABLE`, from the patched uapi header.
pub(crate) const MADV_UPM_UNMERGEABLE: i32 = bindings::MADV_UPM_UNMERGEABLE as i32;

/// 64-bit xxHash with seed 0, the kernel's exported `xxh64()`.
pub(crate) fn xxh64(data: &[u8]) -> u64 {
    // SAFETY: `data` is a valid slice for reads of `data.len()` bytes.
    unsafe { bindings::xxh64(data.as_ptr().cast(), data.len(), 0) }
}

/// Gives the CPU away if a reschedule is due.
pub(crate) fn cond_resched() {
    // SAFETY: Called from process context without spinlocks held (all callers are in the
    // madvise path or the sweep work).
    unsafe { bindings::cond_resched() }
}

/// Flushes the per-CPU LRU and mlock folio batches, which may hold unmapped stable pages.
pub(crate) fn drain_page_batches() {
    // SAFETY: Called from the sweep work, in process context without locks held, as
    // `upm_drain_page_batches()` requires.
    unsafe { bindings::upm_drain_page_batches() }
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
// SAFETY: All `&self` methods only read the page or take further references.
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

    /// A number that identifies this page while the reference is held.
    pub(crate) fn id(&self) -> usize {
        self.0.as_ptr() as usize
    }

    /// xxh64 of the page contents. The page may change underneath (it is not write-protected
    /// yet), so the hash only selects candidates; merging always compares the full page.
    pub(crate) fn content_hash(&self) -> u64 {
        // SAFETY: The page is valid by the type invariant; the mapping is released below.
        let addr = unsafe { bindings::kmap_local_page(self.as_ptr()) };
        // SAFETY: `kmap_local_page()` maps `PAGE_SIZE` bytes at `addr`. The bytes are read by C
        // code only, so a concurrent writer cannot break Rust's aliasing rules.
        let hash = unsafe { bindings::xxh64(addr, PAGE_SIZE, 0) };
        // SAFETY: `addr` was returned by `kmap_local_page()` above, in this context.
        unsafe { bindings::kunmap_local(addr) };
        hash
    }

    /// Number of page table entries that map this page.
    pub(crate) fn mapcount(&self) -> u32 {
        // SAFETY: The page is valid by the type invariant.
        let n = unsafe { bindings::folio_mapcount_of_page(self.as_ptr()) };
        u32::try_from(n).unwrap_or(0)
    }

    /// Number of references on this page, this one included.
    pub(crate) fn refcount(&self) -> u32 {
        // SAFETY: The page is valid by the type invariant.
        let n = unsafe { bindings::page_ref_count(self.as_ptr()) };
        u32::try_from(n).unwrap_or(0)
    }

    /// Takes another reference on the same page.
    pub(crate) fn clone_ref(&self) -> Self {
        // SAFETY: The page is valid and referenced by the type invariant, so a further
        // reference may be taken.
        unsafe { bindings::get_page(self.as_ptr()) };
        // INVARIANT: `get_page()` took the reference the new object owns.
        Self(self.0)
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we own one reference, released exactly once here.
        unsafe { bindings::put_page(self.as_ptr()) };
    }
}

/// An address space handed to the provider for the duration of one madvise call.
///
/// # Invariants
///
/// `self.0` points to an `mm_struct` the caller holds a reference on for the object's lifetime.
pub(crate) struct Mm(NonNull<bindings::mm_struct>);

impl Mm {
    /// Takes `mmap_lock` for reading; fails with `EINTR` on a fatal signal.
    pub(crate) fn read_lock(&self) -> Result<MmapReadGuard<'_>> {
        // SAFETY: The mm is valid by the type invariant.
        let ret = unsafe { bindings::mmap_read_lock_killable(self.0.as_ptr()) };
        if ret != 0 {
            return Err(EINTR);
        }
        // INVARIANT: The lock was taken above.
        Ok(MmapReadGuard { mm: self })
    }
}

/// `mmap_lock` held for reading.
///
/// # Invariants
///
/// The guard owns a read hold of `self.mm`'s `mmap_lock`.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a Mm,
}

impl MmapReadGuard<'_> {
    /// The first VMA that ends after `addr`, like `find_vma()`.
    pub(crate) fn find_vma(&self, addr: usize) -> Option<Vma<'_>> {
        // SAFETY: The mm is valid and `mmap_lock` is held by the type invariant.
        let vma = unsafe { bindings::find_vma(self.mm.0.as_ptr(), addr as c_ulong) };
        // INVARIANT: The VMA stays valid while the guard, which it borrows, holds the lock.
        NonNull::new(vma).map(|vma| Vma {
            vma,
            _guard: PhantomData,
        })
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the guard holds the read lock, released once here.
        unsafe { bindings::mmap_read_unlock(self.mm.0.as_ptr()) };
    }
}

/// What [`Vma::get_page`] found at an address.
pub(crate) enum Mapped {
    /// Nothing present: never faulted in, swapped out or migrating.
    Nothing,
    /// A small anonymous page that may be merged.
    Anon(PageRef),
    /// A KSM page: merged already.
    Ksm,
    /// The zero page.
    Zero,
    /// Part of a large folio (THP).
    Large,
    /// Not an anonymous page.
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
    /// The page is no longer mapped there, or another failure (`EFAULT`, ...).
    Gone,
}

fn merge_result(ret: c_int) -> Result<(), MergeError> {
    match ret {
        0 => Ok(()),
        r if r == bindings::UPM_PAGES_DIFFER as c_int => Err(MergeError::Differ),
        r if r == -(bindings::EAGAIN as c_int) => Err(MergeError::Busy),
        r if r == -(bindings::EBUSY as c_int) => Err(MergeError::Pinned),
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

    /// Whether UPM may merge pages of this VMA (KSM's rules; see `upm_vma_mergeable()`).
    pub(crate) fn is_mergeable(&self) -> bool {
        // SAFETY: The VMA is valid and `mmap_lock` is held, as the function requires.
        unsafe { bindings::upm_vma_mergeable(self.as_ptr()) }
    }

    /// What is mapped at `addr`, without faulting anything in.
    pub(crate) fn get_page(&self, addr: usize) -> Mapped {
        let mut page = ptr::null_mut();
        // SAFETY: The VMA is valid and locked; `addr` is inside it (callers walk
        // `start()..end()`); `page` is a valid place for the result.
        let kind = unsafe { bindings::upm_get_page(self.as_ptr(), addr as c_ulong, &mut page) };
        match kind {
            bindings::upm_page_kind_UPM_PAGE_ANON => match NonNull::new(page) {
                // SAFETY: For `UPM_PAGE_ANON` the function returned a page with one reference,
                // which we take over.
                Some(page) => Mapped::Anon(unsafe { PageRef::from_raw(page) }),
                None => Mapped::Nothing,
            },
            bindings::upm_page_kind_UPM_PAGE_KSM => Mapped::Ksm,
            bindings::upm_page_kind_UPM_PAGE_ZERO => Mapped::Zero,
            bindings::upm_page_kind_UPM_PAGE_LARGE => Mapped::Large,
            bindings::upm_page_kind_UPM_PAGE_OTHER => Mapped::Other,
            _ => Mapped::Nothing,
        }
    }

    /// Splits the large folio mapped at `addr`.
    pub(crate) fn split_large_page(&self, addr: usize) -> Result {
        // SAFETY: The VMA is valid and locked; `addr` is inside it.
        let ret = unsafe { bindings::upm_split_large_page(self.as_ptr(), addr as c_ulong) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }

    /// Write-protects `page` and makes it a KSM page: it becomes a stable page.
    pub(crate) fn promote(&self, page: PageRef) -> Result<StablePage, MergeError> {
        // SAFETY: The VMA is valid and locked; `page` is referenced and was found in this VMA.
        merge_result(unsafe { bindings::upm_promote_page(self.as_ptr(), page.as_ptr()) })?;
        // INVARIANT: Promoted to a KSM page just above.
        Ok(StablePage(page))
    }

    /// Replaces `page` by `stable` if their full contents are equal under write protection.
    pub(crate) fn merge(&self, page: &PageRef, stable: &StablePage) -> Result<(), MergeError> {
        // SAFETY: The VMA is valid and locked; both pages are referenced; `stable` is a KSM page
        // by the invariant of `StablePage`.
        merge_result(unsafe {
            bindings::upm_merge_page(self.as_ptr(), page.as_ptr(), stable.0.as_ptr())
        })
    }

    /// Replaces the all-zero `page`, mapped at `addr`, by the shared zero page.
    pub(crate) fn merge_zero(&self, page: &PageRef, addr: usize) -> Result<(), MergeError> {
        // SAFETY: The VMA is valid and locked; `page` is referenced and mapped at `addr`.
        merge_result(unsafe {
            bindings::upm_merge_zero_page(self.as_ptr(), page.as_ptr(), addr as c_ulong)
        })
    }

    /// Gives every merged page in `start..end` a private copy (KSM's `break_ksm()`).
    pub(crate) fn unmerge(&self, start: usize, end: usize) -> Result {
        // SAFETY: The VMA is valid and locked; `start..end` lies inside it.
        let ret =
            unsafe { bindings::upm_unmerge_range(self.as_ptr(), start as c_ulong, end as c_ulong) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }
}

/// A page that [`Vma::promote`] made a KSM page: its contents never change again.
///
/// # Invariants
///
/// The page is a KSM page, so every mapping of it is read-only and writes copy it.
pub(crate) struct StablePage(PageRef);

impl StablePage {
    /// The page reference.
    pub(crate) fn page(&self) -> &PageRef {
        &self.0
    }

    /// Another reference to the same stable page.
    pub(crate) fn clone_ref(&self) -> Self {
        // INVARIANT: Same page, still a KSM page.
        Self(self.0.clone_ref())
    }
}

/// The provider side of the madvise hook.
pub(crate) trait AdviseHandler: Send + Sync {
    /// Handles one madvise call on `start..end` of `mm` (page aligned, `start < end`).
    fn advise(&self, mm: &Mm, start: usize, end: usize, advice: i32) -> Result;
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
        // INVARIANT: The kernel holds a reference on `mm` during the call.
        let mm = Mm(mm);
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
        // SAFETY: Live by the type invariant. Removing the kobject removes its files and waits
        // for running `show`/`store` calls, so the tables may be freed afterwards.
        unsafe { bindings::kobject_put(self.kobj.as_ptr()) };
    }
}

/// The handler of a periodic work item.
pub(crate) trait PeriodicHandler: Send + Sync {
    /// Does one round of work; returns the delay until the next round in milliseconds.
    fn run(&self) -> u32;
}

#[repr(C)]
struct PeriodicInner<T> {
    work: bindings::delayed_work,
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
                // SAFETY: All-zero is valid storage; it is initialised just below.
                work: unsafe { core::mem::zeroed() },
                handler,
            },
            GFP_KERNEL,
        )?;
        let work = &inner.work as *const bindings::delayed_work as *mut bindings::delayed_work;
        // SAFETY: `work` is pinned storage owned by `inner`, not yet in use.
        unsafe { bindings::init_delayed_work(work, Some(Self::work_callback)) };
        // INVARIANT: Initialised above.
        let this = Self { inner };
        this.queue(delay_ms);
        Ok(this)
    }

    fn queue(&self, delay_ms: u32) {
        Self::queue_raw(&self.inner.work, delay_ms);
    }

    fn queue_raw(work: &bindings::delayed_work, delay_ms: u32) {
        let work = work as *const bindings::delayed_work as *mut bindings::delayed_work;
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
        let work = &self.inner.work as *const bindings::delayed_work as *mut bindings::delayed_work;
        // SAFETY: Initialised by the type invariant. Cancels a pending run, waits for a running
        // one and stops it from re-queueing itself.
        unsafe { bindings::cancel_delayed_work_sync(work) };
    }
}
