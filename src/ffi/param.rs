// SPDX-License-Identifier: GPL-2.0

//! Module parameters and `modinfo` strings.
//!
//! C header: [`include/linux/moduleparam.h`](srctree/include/linux/moduleparam.h)
//!
//! 6.12's `module!` macro has neither (upstream's `rust/kernel/module_param.rs` came in 6.17,
//! with a typed static per parameter). UPM's parameters are its sysfs tunables, set before
//! `init` runs: one [`ParamHandler`] parses and checks them with the code that stores a write
//! to `/sys/kernel/mm/upm/`, so that `options upm ...` and sysfs accept the same values and
//! refuse the same ones (a refused value fails the load with its errno). [`module_params!`]
//! emits, per name, the `struct kernel_param` the module loader looks for in the `__param`
//! section (permission 0: no file under `/sys/module/upm/parameters/`, the tunable's own file
//! is the interface) and its `parm=` description for `modinfo`.

use kernel::{bindings, error::Result, prelude::*, str::CStr};

/// Sets parameters from the module's load arguments.
pub(crate) trait ParamHandler {
    /// Stores `value` for the parameter `name`, one of the names given to [`module_params!`].
    fn set(name: &str, value: &str) -> Result;
}

/// The `struct kernel_param_ops` of a [`ParamHandler`]: `set` only.
pub(crate) struct ParamOps(bindings::kernel_param_ops);

// SAFETY: The operations are function pointers that the loader only reads.
unsafe impl Sync for ParamOps {}

impl ParamOps {
    /// The operations that hand every value to `H`.
    pub(crate) const fn new<H: ParamHandler>() -> Self {
        Self(bindings::kernel_param_ops {
            flags: 0,
            set: Some(set_param::<H>),
            get: None,
            free: None,
        })
    }
}

/// One `struct kernel_param`, as `module_param_cb()` lays it out in the `__param` section.
#[repr(transparent)]
pub(crate) struct KernelParam(bindings::kernel_param);

// SAFETY: The loader only reads parameters (under `kernel_param_lock()`); nothing writes them.
unsafe impl Sync for KernelParam {}

impl KernelParam {
    /// The parameter `name` of this module, set through `ops`.
    pub(crate) const fn new(name: &'static CStr, ops: &'static ParamOps) -> Self {
        Self(bindings::kernel_param {
            name: name.as_char_ptr(),
            // Only the address of the module's `struct module`, which the loader fills in.
            mod_: &raw mut bindings::__this_module,
            ops: &ops.0,
            perm: 0,
            level: -1,
            flags: 0,
            __bindgen_anon_1: bindings::kernel_param__bindgen_ty_1 {
                arg: core::ptr::null_mut(),
            },
        })
    }
}

/// `s` as a byte array of its length, for a `modinfo` string in a static.
pub(crate) const fn modinfo<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// `kernel_param_ops.set`: hands the value to `H`.
///
/// # Safety
///
/// Called by the loader with `kp` one of this module's parameters and `val` null or a
/// NUL-terminated string, both valid for the call.
unsafe extern "C" fn set_param<H: ParamHandler>(
    val: *const kernel::ffi::c_char,
    kp: *const bindings::kernel_param,
) -> kernel::ffi::c_int {
    // A bare `name` with no `=value` comes as a null value: none of ours is a flag.
    if val.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: `kp` is one of the parameters [`module_params!`] made, whose name is a static
    // C string; `val` is a NUL-terminated string, per the function's safety requirements.
    let (name, value) = unsafe { (CStr::from_char_ptr((*kp).name), CStr::from_char_ptr(val)) };
    let (Ok(name), Ok(value)) = (name.to_str(), value.to_str()) else {
        return EINVAL.to_errno();
    };
    match H::set(name, value) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Declares the module's parameters, each with its `modinfo` description, set through
/// `$handler` (a [`ParamHandler`]).
macro_rules! module_params {
    ($handler:ty; $($name:ident: $desc:literal),* $(,)?) => {
        static PARAM_OPS: $crate::ffi::param::ParamOps =
            $crate::ffi::param::ParamOps::new::<$handler>();
        $(
            mod $name {
                const DESC: &str = concat!("parm=", stringify!($name), ":", $desc, "\0");

                #[link_section = "__param"]
                #[used(compiler)]
                static PARAM: $crate::ffi::param::KernelParam =
                    $crate::ffi::param::KernelParam::new(
                        ::kernel::c_str!(stringify!($name)),
                        &super::PARAM_OPS,
                    );

                #[link_section = ".modinfo"]
                #[used(compiler)]
                static MODINFO: [u8; DESC.len()] = $crate::ffi::param::modinfo(DESC);
            }
        )*
    };
}
pub(crate) use module_params;

/// A `modinfo` string of the module (`version`, ...): `modinfo upm` prints it, and the loader
/// makes `version` `/sys/module/upm/version`.
macro_rules! module_info {
    ($field:ident, $value:expr) => {
        const _: () = {
            const INFO: &str = concat!(stringify!($field), "=", $value, "\0");

            #[link_section = ".modinfo"]
            #[used(compiler)]
            static MODINFO: [u8; INFO.len()] = $crate::ffi::param::modinfo(INFO);
        };
    };
}
pub(crate) use module_info;
