// SPDX-License-Identifier: GPL-2.0

//! The registration of the module as the provider of the UPM advices (`struct upm_ops`).
//!
//! C header: [`include/linux/upm.h`](srctree/include/linux/upm.h)

use crate::ffi::mm::MmWithUser;
use core::mem::offset_of;
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_int, c_ulong},
    prelude::*,
    sync::Arc,
    types::Opaque,
};

/// The provider side of the madvise hook.
pub(crate) trait AdviseHandler: Send + Sync {
    /// Handles one madvise call on `start..end` of `mm` (page aligned, `start < end`).
    fn advise(&self, mm: &MmWithUser, start: usize, end: usize, advice: i32) -> Result;
}

/// The C structure the kernel calls through, and the handler it leads to.
#[repr(C)]
struct ProviderOps<T> {
    /// Read by the kernel while registered: `Opaque`, never borrowed by Rust.
    ops: Opaque<bindings::upm_ops>,
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
    /// Registers `handler` as the provider of the UPM advices.
    ///
    /// # Errors
    ///
    /// `EBUSY` if a provider is registered already, `ENOMEM`.
    pub(crate) fn register(module: &'static ThisModule, handler: Arc<T>) -> Result<Self> {
        let ops = KBox::pin(
            ProviderOps {
                ops: Opaque::new(bindings::upm_ops {
                    owner: module.as_ptr(),
                    advise: Some(Self::advise_callback),
                }),
                handler,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `ops` is pinned and lives until `drop`, which unregisters it first.
        to_result(unsafe { bindings::upm_register_ops(ops.ops.get()) })?;
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
        if mm.is_null() {
            return -(bindings::EINVAL as c_int);
        }
        // SAFETY: The kernel holds a user reference on `mm` for the duration of the call.
        let mm = unsafe { MmWithUser::from_raw(mm) };
        match provider.handler.advise(mm, start, end, advice) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
}

impl<T: AdviseHandler> Drop for Provider<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by the type invariant. Returns after an RCU grace period, and calls
        // in flight hold our module, so nothing uses `self.ops` afterwards.
        unsafe { bindings::upm_unregister_ops(self.ops.ops.get()) };
    }
}
