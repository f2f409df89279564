// SPDX-License-Identifier: GPL-2.0

//! UPM's stable nodes (`struct upm_node`): the kernel's record of one merged page.
//!
//! C header: [`include/linux/upm.h`](srctree/include/linux/upm.h)

use core::ptr::NonNull;
use kernel::{
    bindings,
    ffi::c_int,
    types::{ARef, AlwaysRefCounted, Opaque},
};

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
    pub(super) unsafe fn from_raw(node: NonNull<bindings::upm_node>) -> ARef<Self> {
        // SAFETY: `UpmNode` is a transparent wrapper; the reference is transferred.
        unsafe { ARef::from_raw(node.cast()) }
    }

    pub(super) fn as_ptr(&self) -> *mut bindings::upm_node {
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

    /// The merge domain the node was created in (see [`mm_domain`](super::mm_domain)).
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
