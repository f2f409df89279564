// SPDX-License-Identifier: GPL-2.0

//! A self-rearming delayed work item on the system workqueue.
//!
//! C header: [`include/linux/workqueue.h`](srctree/include/linux/workqueue.h)
//!
//! Upstream has `kernel::workqueue::DelayedWork` since 6.17 (`impl_has_delayed_work!`,
//! `Queue::enqueue_delayed()`); a port replaces [`Periodic`] with it and re-queues from
//! `WorkItem::run`.

use core::mem::offset_of;
use kernel::{bindings, ffi::c_int, prelude::*, sync::Arc, types::Opaque};

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
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the work item cannot be allocated.
    pub(crate) fn start(handler: Arc<T>, delay_ms: u32) -> Result<Self> {
        let inner = KBox::pin(
            PeriodicInner {
                work: Opaque::uninit(),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `inner.work` is pinned storage owned by `inner`, not yet in use.
        unsafe { bindings::upm_init_delayed_work(inner.work.get(), Some(Self::work_callback)) };
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
