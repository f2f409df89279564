// SPDX-License-Identifier: GPL-2.0

//! UPM's own kernel interface (`include/linux/upm.h`): merge domains, the calls that act on
//! the whole machine or a whole range, and, in the files below, stable nodes ([`node`]), the
//! merge primitives on a mergeable VMA ([`vma`]) and the provider registration ([`provider`]).
//!
//! C header: [`include/linux/upm.h`](srctree/include/linux/upm.h)

pub(crate) mod node;
pub(crate) mod provider;
pub(crate) mod vma;

pub(crate) use node::UpmNode;
pub(crate) use provider::{AdviseHandler, Provider};
pub(crate) use vma::{Mapped, MergeError, MergeableVma};

use super::mm::{virt::VmaRef, MmWithUser};
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_int, c_ulong},
    prelude::*,
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

/// Frees the kernel's stable nodes whose pages are gone; returns how many.
pub(crate) fn prune_stable_nodes() -> u64 {
    // SAFETY: Called from process context without locks held (the sweep work).
    u64::from(unsafe { bindings::upm_prune() } as u32)
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
