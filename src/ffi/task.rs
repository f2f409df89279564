// SPDX-License-Identifier: GPL-2.0

//! Scheduling helpers of the current task (upstream: `rust/kernel/task.rs`, which has
//! `Task::signal_pending()` but not yet these two).
//!
//! C header: [`include/linux/sched.h`](srctree/include/linux/sched.h)

use kernel::bindings;

/// Gives the CPU away if a reschedule is due.
///
/// Like every sleeping function of the `kernel` crate this must not be called in atomic
/// context; doing so is a bug that `might_sleep()` reports, not a memory-safety violation.
pub(crate) fn cond_resched() {
    // SAFETY: `cond_resched()` has no memory-safety preconditions.
    unsafe { bindings::upm_cond_resched() }
}

/// Whether the current task has been sent a fatal signal.
pub(crate) fn fatal_signal_pending() -> bool {
    // SAFETY: `get_current()` is always valid in process context, and `current` outlives this
    // call.
    unsafe { bindings::upm_fatal_signal_pending(bindings::get_current()) }
}

/// Whether the current task has `CAP_SYS_ADMIN` in the initial user namespace, without an
/// audit record: it only chooses between an exact and a cached answer, never grants access.
pub(crate) fn is_admin() -> bool {
    // SAFETY: `init_user_ns` lives forever; `ns_capable_noaudit()` only reads the current
    // task's credentials.
    unsafe {
        bindings::ns_capable_noaudit(
            core::ptr::addr_of_mut!(bindings::init_user_ns),
            bindings::CAP_SYS_ADMIN as i32,
        )
    }
}
