// SPDX-License-Identifier: GPL-2.0

//! Pages of user mappings, held by reference.
//!
//! C headers: [`include/linux/mm.h`](srctree/include/linux/mm.h) and
//! [`include/linux/highmem.h`](srctree/include/linux/highmem.h)
//!
//! Upstream's `kernel::page::Page` owns an allocation and frees it on drop; a page mapped by a
//! process is instead held by a reference (`get_page()`/`put_page()`), so it is
//! [`ARef<UserPage>`], shaped as upstream's `ARef<Mm>` and `ARef<Task>`.

use core::ptr::NonNull;
use kernel::{
    bindings,
    types::{ARef, AlwaysRefCounted, Opaque},
};

/// Size of a base page in bytes.
pub(crate) const PAGE_SIZE: usize = kernel::page::PAGE_SIZE;

/// A `struct page` of a user mapping.
///
/// # Invariants
///
/// Values of this type are always refcounted using `get_page()`.
#[repr(transparent)]
pub(crate) struct UserPage {
    page: Opaque<bindings::page>,
}

// SAFETY: `put_page()` may run on any thread.
unsafe impl Send for UserPage {}
// SAFETY: All `&self` methods only read the page.
unsafe impl Sync for UserPage {}

// SAFETY: By the type invariants, this type is always refcounted.
unsafe impl AlwaysRefCounted for UserPage {
    fn inc_ref(&self) {
        // SAFETY: The pointer is valid since `self` is a reference.
        unsafe { bindings::upm_page_get(self.as_ptr()) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The caller gives up its reference.
        unsafe { bindings::upm_page_put(obj.cast().as_ptr()) };
    }
}

impl UserPage {
    /// Takes over a page reference returned by C.
    ///
    /// # Safety
    ///
    /// `page` is a valid `struct page` on which the caller owns one reference, which moves to
    /// the returned [`ARef`].
    pub(crate) unsafe fn from_raw(page: NonNull<bindings::page>) -> ARef<Self> {
        // SAFETY: The layouts match (transparent); the caller transfers one reference.
        unsafe { ARef::from_raw(page.cast()) }
    }

    /// The raw pointer to the `struct page`.
    pub(crate) fn as_ptr(&self) -> *mut bindings::page {
        self.page.get()
    }

    /// xxh64 of the page contents with `seed`. The page may change underneath (it is not
    /// write-protected), so the hash only selects candidates; merging compares the full page.
    pub(crate) fn content_hash(&self, seed: u64) -> u64 {
        // SAFETY: The page is valid and referenced; the mapping is released below.
        let addr = unsafe { bindings::kmap_local_page(self.as_ptr()) };
        // SAFETY: `kmap_local_page()` maps `PAGE_SIZE` bytes at `addr`. The bytes are read by C
        // code only, so a concurrent writer cannot break Rust's aliasing rules.
        let hash = unsafe { bindings::xxh64(addr, PAGE_SIZE, seed) };
        // SAFETY: `addr` was returned by `kmap_local_page()` above, in this context.
        unsafe { bindings::kunmap_local(addr) };
        hash
    }

    /// Whether `self` and `other` hold the same bytes right now. Neither is write-protected, so
    /// `true` only says that a merge is worth trying: the merge compares again once it is.
    pub(crate) fn same_contents(&self, other: &UserPage) -> bool {
        // SAFETY: Both pages are valid and referenced; both mappings are released below.
        let (a, b) = unsafe {
            (
                bindings::kmap_local_page(self.as_ptr()),
                bindings::kmap_local_page(other.as_ptr()),
            )
        };
        // SAFETY: Each mapping covers `PAGE_SIZE` bytes, read by C code only (as for the hash).
        let same = unsafe { bindings::memcmp(a, b, PAGE_SIZE) } == 0;
        // SAFETY: Both were mapped above, in this context; local mappings are released in the
        // reverse order.
        unsafe {
            bindings::kunmap_local(b);
            bindings::kunmap_local(a);
        }
        same
    }
}
