// SPDX-License-Identifier: GPL-2.0

//! Virtual memory areas, shaped as upstream's `rust/kernel/mm/virt.rs` (6.16).
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! A [`VmaRef`] is only ever handed out by reference from an
//! [`MmapReadGuard`](super::MmapReadGuard), so it cannot outlive the lock that keeps it alive.
//! Operations with further preconditions live on types obtained by a checked conversion, as
//! upstream's `as_mixedmap_vma()`: UPM's is
//! [`MergeableVma::from_vma`](crate::ffi::upm::MergeableVma::from_vma).

use kernel::{bindings, types::Opaque};

/// A `struct vm_area_struct` with read access.
///
/// # Invariants
///
/// The caller holds the mmap read lock (or stronger) of the VMA's mm.
#[repr(transparent)]
pub(crate) struct VmaRef {
    vma: Opaque<bindings::vm_area_struct>,
}

impl VmaRef {
    /// Accesses a VMA given a raw pointer.
    ///
    /// # Safety
    ///
    /// `vma` is valid for the duration of 'a, and the mmap read lock (or stronger) is held for
    /// at least that long.
    pub(crate) unsafe fn from_raw<'a>(vma: *const bindings::vm_area_struct) -> &'a Self {
        // SAFETY: The caller ensures the invariants for 'a; the layouts match (transparent).
        unsafe { &*vma.cast() }
    }

    /// The raw pointer to this area.
    pub(crate) fn as_ptr(&self) -> *mut bindings::vm_area_struct {
        self.vma.get()
    }

    /// The (inclusive) start address of the area.
    pub(crate) fn start(&self) -> usize {
        // SAFETY: By the type invariants the mmap read lock is held, so this read does not race.
        unsafe { (*self.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.vm_start }
    }

    /// The (exclusive) end address of the area.
    pub(crate) fn end(&self) -> usize {
        // SAFETY: As in `start()`.
        unsafe { (*self.as_ptr()).__bindgen_anon_1.__bindgen_anon_1.vm_end }
    }
}
