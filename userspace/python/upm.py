# SPDX-License-Identifier: GPL-2.0 OR MIT
"""UPM for Python runtimes: merge this process's duplicate memory with MADV_UPM_MERGEABLE.

ctypes only, no compiled extension. Typical use, once after a function's cold start::

    import gc, upm
    gc.freeze()                      # keep the collector from dirtying object pages
    if upm.is_supported():
        upm.advise_all_anonymous()   # or upm.advise(numpy_array) for selected buffers

The advice values come from include/upm.h, the one definition shared by every userspace
piece of UPM (tests check it against the kernel's uapi header).
"""

import ctypes
import errno
import mmap
import os
import re

_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "upm.h")
SYSFS_DIR = "/sys/kernel/mm/upm"


def _read_constants(path=_HEADER):
    with open(path, encoding="ascii") as header:
        text = header.read()
    values = dict(re.findall(r"#define\s+(UPM_MADV_\w+)\s+(\d+)", text))
    return int(values["UPM_MADV_MERGEABLE"]), int(values["UPM_MADV_UNMERGEABLE"])


MADV_UPM_MERGEABLE, MADV_UPM_UNMERGEABLE = _read_constants()
PAGE_SIZE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.madvise.restype = ctypes.c_int


class UpmError(OSError):
    """madvise failed; errno tells why (EINVAL: no UPM module, ENOMEM: unmapped parts)."""


def _madvise(start, length, advice):
    if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) != 0:
        err = ctypes.get_errno()
        raise UpmError(err, f"madvise({start:#x}, {length}, {advice}): {os.strerror(err)}")


def _page_range(obj_or_start, length=None):
    """(start, length) of the whole pages inside a buffer, or of an explicit range."""
    if length is not None:
        start, end = int(obj_or_start), int(obj_or_start) + int(length)
    else:
        view = memoryview(obj_or_start)
        if view.readonly or not view.c_contiguous:
            raise TypeError("need a writable, contiguous buffer (numpy array, bytearray, mmap)")
        view = view.cast("B")
        start = ctypes.addressof(ctypes.c_char.from_buffer(view)) if view.nbytes else 0
        end = start + view.nbytes
    first = (start + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    last = end // PAGE_SIZE * PAGE_SIZE
    return first, max(0, last - first)


def is_supported():
    """True if the kernel has the UPM hook and the module is loaded."""
    try:
        _madvise(0, 0, MADV_UPM_MERGEABLE)  # zero length: only the advice is checked
    except UpmError:
        return False
    return os.path.isdir(SYSFS_DIR)


def advise(obj_or_start, length=None):
    """Merge the whole pages of a writable buffer (numpy array, bytearray, mmap), or of
    [start, start + length)."""
    start, size = _page_range(obj_or_start, length)
    if size:
        _madvise(start, size, MADV_UPM_MERGEABLE)


def unmerge(obj_or_start, length=None):
    """Give the pages of a buffer or range private copies again."""
    start, size = _page_range(obj_or_start, length)
    if size:
        _madvise(start, size, MADV_UPM_UNMERGEABLE)


_SKIP_NAMES = ("[stack", "[vdso]", "[vvar]", "[vsyscall]", "[uprobes]")


def anonymous_ranges(maps_path="/proc/self/maps"):
    """Private anonymous mappings (heap and anonymous mmaps) that are readable and writable,
    without stacks, vdso/vvar and guard pages."""
    ranges = []
    with open(maps_path, encoding="ascii") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            addresses, perms, inode = fields[0], fields[1], fields[4]
            name = fields[5].strip() if len(fields) > 5 else ""
            if perms[3] != "p" or not perms.startswith("rw") or inode != "0":
                continue
            if name and (name != "[heap]" and not name.startswith("[anon")):
                continue
            if name.startswith(_SKIP_NAMES):
                continue
            start, end = (int(x, 16) for x in addresses.split("-"))
            ranges.append((start, end - start))
    return ranges


def advise_all_anonymous():
    """Advise every private anonymous mapping of this process; returns bytes advised.
    Mappings that vanish meanwhile (ENOMEM) are ignored."""
    total = 0
    for start, length in anonymous_ranges():
        try:
            _madvise(start, length, MADV_UPM_MERGEABLE)
            total += length
        except UpmError as e:
            if e.errno != errno.ENOMEM:
                raise
    return total


def stats():
    """The module's numeric counters and tunables, as a dict of ints.

    Files that hold text (domain_policy) or that the caller may not read (the root-only
    domains) are left out.
    """
    result = {}
    for name in sorted(os.listdir(SYSFS_DIR)):
        try:
            with open(os.path.join(SYSFS_DIR, name), encoding="ascii") as f:
                result[name] = int(f.read())
        except (OSError, ValueError):
            continue
    return result
