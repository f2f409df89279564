// SPDX-License-Identifier: GPL-2.0

//! Address spaces, shaped as upstream's `rust/kernel/mm.rs` (6.16).
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! [`Mm`] holds the structure (`mmgrab`), [`MmWithUser`] the address space (`mmget`), and
//! [`MmWithUserAsync`] drops its user with `mmput_async()`, which never tears an address space
//! down in the caller's context. [`MmapReadGuard`] holds `mmap_lock` for reading and lends out
//! the VMAs of [`virt`].
//!
//! Not upstream (a port adds them to `rust/kernel/mm.rs` or keeps them here):
//! [`MmWithUser::mmap_read_lock_killable`] and [`MmapReadGuard::find_vma`], and
//! [`MmWithUserAsync`], which the series on the list had but upstream's file does not.

pub(crate) mod virt;

use core::{marker::PhantomData, ops::Deref, ptr::NonNull};
use kernel::{
    bindings,
    prelude::*,
    types::{ARef, AlwaysRefCounted, Opaque},
};
use virt::VmaRef;

/// Marks a type that must stay on its thread (upstream: `kernel::types::NotThreadSafe`).
type NotThreadSafe = PhantomData<*mut ()>;

/// A `struct mm_struct`, held by `mmgrab()`: the structure, not necessarily the address space.
///
/// # Invariants
///
/// Values of this type are always refcounted using `mmgrab`.
#[repr(transparent)]
pub(crate) struct Mm {
    mm: Opaque<bindings::mm_struct>,
}

// SAFETY: `mmdrop()` may run on another thread than `mmgrab()`.
unsafe impl Send for Mm {}
// SAFETY: All methods of `Mm` may be called in parallel.
unsafe impl Sync for Mm {}

// SAFETY: By the type invariants, this type is always refcounted.
unsafe impl AlwaysRefCounted for Mm {
    fn inc_ref(&self) {
        // SAFETY: The pointer is valid since `self` is a reference.
        unsafe { bindings::upm_mmgrab(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller gives up its refcount.
        unsafe { bindings::upm_mmdrop(obj.cast().as_ptr()) };
    }
}

impl Mm {
    /// The raw pointer to the inner `mm_struct`.
    pub(crate) fn as_raw(&self) -> *mut bindings::mm_struct {
        self.mm.get()
    }

    /// Calls `mmget_not_zero()` and returns a handle if it succeeds.
    pub(crate) fn mmget_not_zero(&self) -> Option<ARef<MmWithUser>> {
        // SAFETY: The pointer is valid since `self` is a reference.
        if unsafe { bindings::upm_mmget_not_zero(self.as_raw()) } {
            // SAFETY: We just took an `mmget` refcount.
            Some(unsafe { ARef::from_raw(NonNull::new_unchecked(self.as_raw().cast())) })
        } else {
            None
        }
    }
}

/// An `mm_struct` whose `mm_users` is non-zero: the address space exists.
///
/// # Invariants
///
/// Values of this type are always refcounted using `mmget`; `mm_users` is non-zero.
#[repr(transparent)]
pub(crate) struct MmWithUser {
    mm: Mm,
}

// SAFETY: `mmput()` may run on another thread than `mmget()`.
unsafe impl Send for MmWithUser {}
// SAFETY: All methods of `MmWithUser` may be called in parallel.
unsafe impl Sync for MmWithUser {}

// SAFETY: By the type invariants, this type is always refcounted.
unsafe impl AlwaysRefCounted for MmWithUser {
    fn inc_ref(&self) {
        // SAFETY: The pointer is valid since `self` is a reference.
        unsafe { bindings::upm_mmget(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller gives up its refcount.
        unsafe { bindings::mmput(obj.cast().as_ptr()) };
    }
}

impl Deref for MmWithUser {
    type Target = Mm;

    fn deref(&self) -> &Mm {
        &self.mm
    }
}

impl MmWithUser {
    /// Obtains a reference from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` points at an `mm_struct` whose `mm_users` stays non-zero for the lifetime `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *const bindings::mm_struct) -> &'a MmWithUser {
        // SAFETY: The caller promises validity for 'a; the layouts match (transparent).
        unsafe { &*ptr.cast() }
    }

    /// Uses `mmput_async()` when dropping this refcount.
    pub(crate) fn into_mmput_async(me: ARef<MmWithUser>) -> ARef<MmWithUserAsync> {
        // SAFETY: The layouts and invariants are compatible.
        unsafe { ARef::from_raw(ARef::into_raw(me).cast()) }
    }

    /// Tries to take `mmap_lock` for reading, without waiting.
    pub(crate) fn mmap_read_trylock(&self) -> Option<MmapReadGuard<'_>> {
        // SAFETY: The pointer is valid since `self` is a reference.
        if unsafe { bindings::upm_mmap_read_trylock(self.as_raw()) } {
            // INVARIANT: We just took the read lock.
            Some(MmapReadGuard {
                mm: self,
                _nts: PhantomData,
            })
        } else {
            None
        }
    }

    /// Takes `mmap_lock` for reading. (Not upstream.)
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal arrives while it waits.
    pub(crate) fn mmap_read_lock_killable(&self) -> Result<MmapReadGuard<'_>> {
        // SAFETY: The pointer is valid since `self` is a reference.
        if unsafe { bindings::upm_mmap_read_lock_killable(self.as_raw()) } != 0 {
            return Err(EINTR);
        }
        // INVARIANT: We just took the read lock.
        Ok(MmapReadGuard {
            mm: self,
            _nts: PhantomData,
        })
    }
}

/// An [`MmWithUser`] whose refcount is dropped with `mmput_async()`.
///
/// # Invariants
///
/// Values of this type are always refcounted using `mmget`; `mm_users` is non-zero.
#[repr(transparent)]
pub(crate) struct MmWithUserAsync {
    mm: MmWithUser,
}

// SAFETY: `mmput_async()` may run on another thread than `mmget()`.
unsafe impl Send for MmWithUserAsync {}
// SAFETY: All methods of `MmWithUserAsync` may be called in parallel.
unsafe impl Sync for MmWithUserAsync {}

// SAFETY: By the type invariants, this type is always refcounted.
unsafe impl AlwaysRefCounted for MmWithUserAsync {
    fn inc_ref(&self) {
        // SAFETY: The pointer is valid since `self` is a reference.
        unsafe { bindings::upm_mmget(self.as_raw()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller gives up its refcount. If it is the last, the address space is
        // torn down from a workqueue, not under the caller's locks.
        unsafe { bindings::mmput_async(obj.cast().as_ptr()) };
    }
}

impl Deref for MmWithUserAsync {
    type Target = MmWithUser;

    fn deref(&self) -> &MmWithUser {
        &self.mm
    }
}

/// `mmap_lock` held for reading.
///
/// # Invariants
///
/// The guard owns a read hold of `mm`'s `mmap_lock`.
pub(crate) struct MmapReadGuard<'a> {
    mm: &'a MmWithUser,
    // `mmap_read_lock()` and `mmap_read_unlock()` must be called on the same thread.
    _nts: NotThreadSafe,
}

impl MmapReadGuard<'_> {
    /// The VMA that contains `vma_addr`, if any.
    pub(crate) fn vma_lookup(&self, vma_addr: usize) -> Option<&VmaRef> {
        // SAFETY: We hold the read lock by the type invariants; any address is allowed.
        let vma = unsafe { bindings::upm_vma_lookup(self.mm.as_raw(), vma_addr) };
        // SAFETY: A VMA found under the lock stays valid while the guard, which the returned
        // reference borrows, holds the lock.
        (!vma.is_null()).then(|| unsafe { VmaRef::from_raw(vma) })
    }

    /// The first VMA that ends after `addr`, like `find_vma()`. (Not upstream.)
    pub(crate) fn find_vma(&self, addr: usize) -> Option<&VmaRef> {
        // SAFETY: We hold the read lock by the type invariants; any address is allowed.
        let vma = unsafe { bindings::find_vma(self.mm.as_raw(), addr) };
        // SAFETY: As in `vma_lookup()`.
        (!vma.is_null()).then(|| unsafe { VmaRef::from_raw(vma) })
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: We hold the read lock by the type invariants.
        unsafe { bindings::upm_mmap_read_unlock(self.mm.as_raw()) };
    }
}
