// SPDX-License-Identifier: GPL-2.0

//! A mutex whose wait a fatal signal interrupts (`mutex_lock_killable()`).
//!
//! C header: [`include/linux/mutex.h`](srctree/include/linux/mutex.h)
//!
//! Upstream's `kernel::sync::Mutex` (6.12) has no killable lock: an adviser waiting for a
//! shard of the index that another adviser holds across a merge would sleep uninterruptibly.
//! [`KillableMutex`] is the same `struct mutex`, locked with `mutex_lock_killable()` where a
//! process waits for it and with `mutex_lock()` where a kernel thread does.

use core::{cell::UnsafeCell, marker::PhantomData, ops::Deref, ops::DerefMut};
use kernel::{bindings, error::to_result, prelude::*, str::CStr, types::Opaque};

/// A lockdep class: the locks created at one place, in static memory as lockdep requires.
pub(crate) struct LockClass(Opaque<bindings::lock_class_key>);

// SAFETY: lockdep uses only the key's address, and its own fields under its own locks.
unsafe impl Sync for LockClass {}

impl LockClass {
    /// A class for a `static`: lockdep expects a statically allocated key uninitialised.
    pub(crate) const fn new() -> Self {
        Self(Opaque::uninit())
    }

    /// The key, for a C structure that names its lockdep class.
    pub(crate) fn as_ptr(&self) -> *mut bindings::lock_class_key {
        self.0.get()
    }
}

/// A [`KillableMutex`] with a lockdep class of its own call site and a name.
macro_rules! new_killable_mutex {
    ($data:expr, $name:literal) => {{
        static CLASS: $crate::ffi::sync::LockClass = $crate::ffi::sync::LockClass::new();
        $crate::ffi::sync::KillableMutex::new($data, kernel::c_str!($name), &CLASS)
    }};
}
pub(crate) use new_killable_mutex;

/// A `struct mutex` and the data it protects.
///
/// # Invariants
///
/// `data` is only accessed through a [`KillableGuard`], which exists only while `mutex` is
/// held by the guard's thread.
#[pin_data]
pub(crate) struct KillableMutex<T> {
    #[pin]
    mutex: Opaque<bindings::mutex>,
    data: UnsafeCell<T>,
}

// SAFETY: The mutex hands the data to one thread at a time; it moves between threads with it.
unsafe impl<T: Send> Send for KillableMutex<T> {}
// SAFETY: As above: `&KillableMutex` gives access to the data only under the mutex.
unsafe impl<T: Send> Sync for KillableMutex<T> {}

impl<T> KillableMutex<T> {
    /// A mutex around `data`, in lockdep class `class` under `name`.
    pub(crate) fn new(
        data: T,
        name: &'static CStr,
        class: &'static LockClass,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            data: UnsafeCell::new(data),
            // SAFETY: `slot` is valid for writes and pinned; `name` and `class` are static,
            // as `__mutex_init()` requires.
            mutex <- Opaque::ffi_init(|slot| unsafe {
                bindings::__mutex_init(slot, name.as_char_ptr(), class.as_ptr())
            }),
        })
    }

    /// Locks the mutex, waiting as long as it takes (for kernel threads: the sweep).
    pub(crate) fn lock(&self) -> KillableGuard<'_, T> {
        // SAFETY: The mutex was initialised by `new` and is pinned with `self`.
        unsafe { bindings::mutex_lock(self.mutex.get()) };
        // INVARIANT: Locked above, by this thread.
        KillableGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Locks the mutex, unless a fatal signal comes while this process waits for it.
    ///
    /// # Errors
    ///
    /// `EINTR` if a fatal signal is pending while the mutex is contended.
    pub(crate) fn lock_killable(&self) -> Result<KillableGuard<'_, T>> {
        #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
        // SAFETY: The mutex was initialised by `new` and is pinned with `self`.
        let ret = unsafe { bindings::mutex_lock_killable_nested(self.mutex.get(), 0) };
        #[cfg(not(CONFIG_DEBUG_LOCK_ALLOC))]
        // SAFETY: As above.
        let ret = unsafe { bindings::mutex_lock_killable(self.mutex.get()) };
        to_result(ret)?;
        // INVARIANT: Locked above, by this thread.
        Ok(KillableGuard {
            lock: self,
            _not_send: PhantomData,
        })
    }
}

/// The data of a locked [`KillableMutex`]; unlocks it when dropped.
///
/// # Invariants
///
/// `lock.mutex` is held by the thread that holds the guard (which cannot move to another).
pub(crate) struct KillableGuard<'a, T> {
    lock: &'a KillableMutex<T>,
    _not_send: PhantomData<*mut ()>,
}

impl<T> Deref for KillableGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: The mutex is held by the type invariant: nobody else accesses the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for KillableGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: As above, and `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for KillableGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: The mutex is held by this thread by the type invariant.
        unsafe { bindings::mutex_unlock(self.lock.mutex.get()) };
    }
}
