// SPDX-License-Identifier: GPL-2.0

//! The one place where UPM touches `bindings::`.
//!
//! Each file mirrors a file of upstream's `rust/kernel`, with the same type names and method
//! shapes where upstream has the type, so that a port to a kernel that has them replaces the
//! file by a `use` of the upstream type (the map is in `Documentation/admin-guide/mm/upm.rst`,
//! "Porting the module"):
//!
//! | file | upstream | what |
//! | --- | --- | --- |
//! | [`mm`] | `rust/kernel/mm.rs` (6.16) | [`mm::Mm`], [`mm::MmWithUser`], [`mm::MmWithUserAsync`], [`mm::MmapReadGuard`] |
//! | [`mm::virt`] | `rust/kernel/mm/virt.rs` (6.16) | [`mm::virt::VmaRef`] |
//! | [`page`] | none (`Page` owns an allocation) | [`page::UserPage`], a referenced page of a user mapping |
//! | [`param`] | `rust/kernel/module_param.rs` (6.17) | [`param::module_params!`], load-time parameters handled by one [`param::ParamHandler`]; `modinfo` strings |
//! | [`task`] | `rust/kernel/task.rs` | `cond_resched()`, `fatal_signal_pending()` |
//! | [`workqueue`] | `DelayedWork` (6.17) | [`workqueue::Periodic`], a self-rearming delayed work |
//! | [`sync`] | `rust/kernel/sync/lock/mutex.rs` | [`sync::KillableMutex`], a mutex an adviser waits for killably (upstream's has no killable lock) |
//! | [`sysfs`] | none | [`sysfs::SysfsDir`], a directory of attributes under `/sys/kernel/mm/` |
//! | [`upm`] | UPM's own (`include/linux/upm.h`) | merge domains and range calls; [`upm::node`]: stable nodes; [`upm::vma`]: [`upm::MergeableVma`] and the merge primitives; [`upm::provider`]: the provider registration |
//!
//! The directory is `ffi/`, not `kernel/`, so that it does not shadow the `kernel` crate.

pub(crate) mod mm;
pub(crate) mod page;
pub(crate) mod param;
pub(crate) mod sync;
pub(crate) mod sysfs;
pub(crate) mod task;
pub(crate) mod upm;
pub(crate) mod workqueue;

use kernel::bindings;

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
