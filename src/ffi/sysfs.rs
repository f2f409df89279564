// SPDX-License-Identifier: GPL-2.0

//! A directory of attributes under `/sys/kernel/mm/` (upstream has no sysfs abstraction yet).
//!
//! C headers: [`include/linux/kobject.h`](srctree/include/linux/kobject.h) and
//! [`include/linux/sysfs.h`](srctree/include/linux/sysfs.h)
//!
//! Each file is a `kobj_attribute` with a static lockdep class, embedded in a record that
//! leads back to the [`SysfsHandler`]. Dropping the [`SysfsDir`] deletes the kobject first
//! (`kobject_del()` removes the files and waits for running `show`/`store` calls), so no read
//! reaches the module's code after it is gone, even with `CONFIG_DEBUG_KOBJECT_RELEASE`
//! delaying the final release.

use super::page::PAGE_SIZE;
#[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
use super::sync::LockClass;
use core::ptr::{self, NonNull};
use kernel::{bindings, error::to_result, ffi::c_char, prelude::*, str::CStr, sync::Arc};

/// The handler of a sysfs directory's files.
pub(crate) trait SysfsHandler: Send + Sync {
    /// The file names; a file's index in this list identifies it in `show` and `store`.
    const FILES: &'static [SysfsFile];
    /// Writes the value of file `index` into `out`.
    fn show(&self, index: usize, out: &mut SysfsBuf<'_>) -> Result;
    /// Parses `input` and sets the value of writable file `index`.
    fn store(&self, index: usize, input: &str) -> Result;
}

/// One sysfs file.
pub(crate) struct SysfsFile {
    /// The file name.
    pub(crate) name: &'static CStr,
    /// Who may read and write it.
    pub(crate) access: Access,
}

/// Who may read and write a sysfs file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Everyone reads (0444).
    Read,
    /// Everyone reads, root writes: a tunable (0644).
    ReadWrite,
    /// Only root reads (0400).
    RootRead,
    /// Only root reads and writes (0600).
    RootReadWrite,
}

/// The page-sized output buffer of a sysfs `show`.
pub(crate) struct SysfsBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl SysfsBuf<'_> {
    /// Bytes left in the buffer.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }
}

impl core::fmt::Write for SysfsBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The lockdep class of our sysfs attributes (what `sysfs_attr_init()` gives C attributes),
/// only with lockdep, as `struct attribute` has a key only then.
#[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
static SYSFS_ATTR_LOCK_CLASS: LockClass = LockClass::new();

#[repr(C)]
struct SysfsAttr<T> {
    attr: bindings::kobj_attribute,
    index: usize,
    handler: Arc<T>,
}

/// A directory under `/sys/kernel/mm/` whose files are served by a [`SysfsHandler`].
///
/// # Invariants
///
/// `kobj` is a live kobject holding the files described by `attrs`, removed in `drop`.
pub(crate) struct SysfsDir<T: SysfsHandler> {
    kobj: NonNull<bindings::kobject>,
    _attrs: KVec<SysfsAttr<T>>,
    _table: KVec<*mut bindings::attribute>,
    _group: KBox<bindings::attribute_group>,
}

// SAFETY: The kobject and the tables are only touched by `drop`, from any thread.
unsafe impl<T: SysfsHandler> Send for SysfsDir<T> {}
// SAFETY: `&SysfsDir` gives no access to anything.
unsafe impl<T: SysfsHandler> Sync for SysfsDir<T> {}

impl<T: SysfsHandler> SysfsDir<T> {
    /// Creates `/sys/kernel/mm/<name>/` with the files `T::FILES`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or what `kobject_create_and_add()` and `sysfs_create_group()` return
    /// (`EEXIST` if the directory exists).
    pub(crate) fn create(name: &'static CStr, handler: Arc<T>) -> Result<Self> {
        let mut attrs = KVec::with_capacity(T::FILES.len(), GFP_KERNEL)?;
        for (index, file) in T::FILES.iter().enumerate() {
            // SAFETY: All-zero is a valid `kobj_attribute` (null pointers, no callbacks).
            let mut attr: bindings::kobj_attribute = unsafe { core::mem::zeroed() };
            attr.attr.name = file.name.as_char_ptr();
            attr.attr.mode = match file.access {
                Access::Read => 0o444,
                Access::ReadWrite => 0o644,
                Access::RootRead => 0o400,
                Access::RootReadWrite => 0o600,
            };
            #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
            {
                // Dynamically allocated attributes need a static lockdep key.
                attr.attr.key = SYSFS_ATTR_LOCK_CLASS.as_ptr();
            }
            attr.show = Some(Self::show_callback);
            if matches!(file.access, Access::ReadWrite | Access::RootReadWrite) {
                attr.store = Some(Self::store_callback);
            }
            attrs.push(
                SysfsAttr {
                    attr,
                    index,
                    handler: handler.clone(),
                },
                GFP_KERNEL,
            )?;
        }
        // `attrs` never grows again, so the addresses taken below stay valid.
        let mut table = KVec::with_capacity(attrs.len() + 1, GFP_KERNEL)?;
        for a in attrs.iter_mut() {
            table.push(&mut a.attr.attr as *mut bindings::attribute, GFP_KERNEL)?;
        }
        table.push(ptr::null_mut(), GFP_KERNEL)?;
        // SAFETY: All-zero is a valid `attribute_group`.
        let mut group: KBox<bindings::attribute_group> =
            KBox::new(unsafe { core::mem::zeroed() }, GFP_KERNEL)?;
        group.attrs = table.as_mut_ptr();

        // SAFETY: `mm_kobj` is created at boot and never freed; `name` is a valid C string.
        let kobj =
            unsafe { bindings::kobject_create_and_add(name.as_char_ptr(), bindings::mm_kobj) };
        let kobj = NonNull::new(kobj).ok_or(ENOMEM)?;
        // SAFETY: `kobj` is live; `group` and the attributes it points to live until `drop`,
        // which removes the files before freeing them.
        let created = to_result(unsafe { bindings::sysfs_create_group(kobj.as_ptr(), &*group) });
        if created.is_err() {
            // SAFETY: Drops the reference `kobject_create_and_add()` returned.
            unsafe { bindings::kobject_put(kobj.as_ptr()) };
        }
        created?;
        // INVARIANT: Created above with the files of `attrs`.
        Ok(Self {
            kobj,
            _attrs: attrs,
            _table: table,
            _group: group,
        })
    }

    /// # Safety
    ///
    /// `attr` is the `attr` field of a `SysfsAttr<T>` of a live `SysfsDir<T>`.
    unsafe fn attr<'a>(attr: *mut bindings::kobj_attribute) -> &'a SysfsAttr<T> {
        // SAFETY: `attr` is the first field of the `#[repr(C)]` `SysfsAttr<T>`, alive while
        // the file exists, by the function's precondition.
        unsafe { &*attr.cast::<SysfsAttr<T>>() }
    }

    /// # Safety
    ///
    /// Called by sysfs only, with one of our attributes and a page-sized buffer.
    unsafe extern "C" fn show_callback(
        _kobj: *mut bindings::kobject,
        attr: *mut bindings::kobj_attribute,
        buf: *mut c_char,
    ) -> isize {
        // SAFETY: sysfs calls us with one of our attributes while its file exists.
        let attr = unsafe { Self::attr(attr) };
        // SAFETY: sysfs passes a zeroed, page-sized buffer that we may fill.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
        let mut out = SysfsBuf { buf, len: 0 };
        match attr.handler.show(attr.index, &mut out) {
            Ok(()) => out.len as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// Called by sysfs only, with one of our attributes and `count` readable bytes at `buf`.
    unsafe extern "C" fn store_callback(
        _kobj: *mut bindings::kobject,
        attr: *mut bindings::kobj_attribute,
        buf: *const c_char,
        count: usize,
    ) -> isize {
        // SAFETY: sysfs calls us with one of our attributes while its file exists.
        let attr = unsafe { Self::attr(attr) };
        // SAFETY: sysfs passes `count` readable bytes.
        let bytes = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
        let result = core::str::from_utf8(bytes)
            .map_err(|_| EINVAL)
            .and_then(|s| attr.handler.store(attr.index, s.trim()));
        match result {
            Ok(()) => count as isize,
            Err(e) => e.to_errno() as isize,
        }
    }
}

impl<T: SysfsHandler> Drop for SysfsDir<T> {
    fn drop(&mut self) {
        // SAFETY: Live by the type invariant. `kobject_del()` removes the files now and waits
        // for running `show`/`store` calls, so the tables and our code may go afterwards; the
        // final `kobject_put()` may release the kobject later (CONFIG_DEBUG_KOBJECT_RELEASE
        // delays it), which no longer reaches us.
        unsafe {
            bindings::kobject_del(self.kobj.as_ptr());
            bindings::kobject_put(self.kobj.as_ptr());
        }
    }
}
