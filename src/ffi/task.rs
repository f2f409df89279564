// SPDX-License-Identifier: GPL-2.0

//! Scheduling helpers of the current task (upstream: `rust/kernel/task.rs`, which has
//! `Task::signal_pending()` but not yet these two).

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
