# SPDX-License-Identifier: GPL-2.0 OR MIT
"""UPM for Python runtimes: merge this process's duplicate memory with MADV_UPM_MERGEABLE.

ctypes only, no compiled extension. Typical use::

    import gc, upm
    upm.mmap_large_allocations()     # first: before the runtime loads its model
    ...                              # the cold start: load the model, warm up
    gc.freeze()                      # keep the collector from dirtying object pages
    if upm.is_supported():
        upm.advise_all_anonymous()   # or upm.advise(numpy_array) for selected buffers

ONNX Runtime: call mmap_large_allocations() before creating the InferenceSession, and advise
after the first requests (gc.freeze() first), once the session has built its graph and its
buffers: what it allocates on the first run is then advised too. Pre-packing and the CPU memory
arena make no measurable difference. About a fifth of an instance's private pages still differ
from every page of another instance, nearly all on the brk heap: Python objects and the
runtime's structures hold pointers, and pointers differ between processes with address space
randomisation, dict and set layouts with Python's hash randomisation. A forked worker inherits
both from its parent; tests/demo/demo_identical_pages.py measures each.

The advice values come from include/upm.h, the one definition shared by every userspace
piece of UPM (tests check it against the kernel's uapi header), packaged as upm/upm.h.
"""

import ctypes
import errno
import mmap
import os
import re
from typing import Dict, List, Optional, Tuple, Union

__version__ = "0.1.0"

# A link to include/upm.h in the repository; a copy in an installed package.
_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upm.h")
SYSFS_DIR = "/sys/kernel/mm/upm"


def _read_constants(path: str = _HEADER) -> Tuple[int, int]:
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


def _madvise(start: int, length: int, advice: int) -> None:
    if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) != 0:
        err = ctypes.get_errno()
        raise UpmError(err, f"madvise({start:#x}, {length}, {advice}): {os.strerror(err)}")


# Anything with the buffer protocol (numpy array, bytearray, private mmap), or an address.
Buffer = Union[int, object]


def _shared_in(start: int, length: int, maps_path: str = "/proc/self/maps") -> bool:
    """Whether any part of [start, start + length) lies in a shared mapping."""
    with open(maps_path, encoding="ascii") as maps:
        for line in maps:
            fields = line.split(maxsplit=2)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo < start + length and start < hi and fields[1][3] == "s":
                return True
    return False


def _page_range(obj_or_start: Buffer, length: Optional[int] = None) -> Tuple[int, int]:
    """(start, length) of the whole pages inside a buffer, or of an explicit range.

    Raises ValueError for what would silently merge nothing: a buffer that holds no whole
    page, or shared memory (Python's mmap.mmap(-1, n) is MAP_SHARED by default).
    """
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
    if last <= first:
        raise ValueError(f"{end - start} bytes at {start:#x} hold no whole page: UPM merges "
                         "whole pages (use page-aligned buffers of at least one page)")
    if _shared_in(first, last - first):
        raise ValueError("shared memory is never merged: use private anonymous memory, e.g. "
                         "mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)")
    return first, last - first


def is_supported() -> bool:
    """True if the kernel has the UPM hook and the module is loaded."""
    try:
        _madvise(0, 0, MADV_UPM_MERGEABLE)  # zero length: only the advice is checked
    except UpmError:
        return False
    return os.path.isdir(SYSFS_DIR)


def advise(obj_or_start: Buffer, length: Optional[int] = None) -> None:
    """Merge the whole pages of a writable buffer (numpy array, bytearray, private mmap), or
    of [start, start + length). ValueError if that is no whole page or shared memory."""
    start, size = _page_range(obj_or_start, length)
    _madvise(start, size, MADV_UPM_MERGEABLE)


def unmerge(obj_or_start: Buffer, length: Optional[int] = None) -> None:
    """Give the pages of a buffer or range private copies again."""
    start, size = _page_range(obj_or_start, length)
    _madvise(start, size, MADV_UPM_UNMERGEABLE)


def anonymous_ranges(maps_path: str = "/proc/self/maps") -> List[Tuple[int, int]]:
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
            # The same rule as the Rust crate's and the preload shim's: no name (anonymous
            # mmap), the heap, or a named anonymous mapping (prctl PR_SET_VMA_ANON_NAME).
            if name and name != "[heap]" and not name.startswith("[anon:"):
                continue
            start, end = (int(x, 16) for x in addresses.split("-"))
            ranges.append((start, end - start))
    return ranges


# mallopt(3)'s M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3


def mmap_large_allocations(threshold: int = 128 * 1024) -> None:
    """Give every allocation of at least threshold bytes its own mapping (glibc's malloc).

    Identical data merges only where it lies at the same offset within its pages in every
    instance. glibc maps a large allocation on its own, at a fixed offset in its first page,
    but raises that threshold each time such a mapping is freed (up to 32 MiB): a runtime
    that frees a large buffer while it loads a model (ONNX Runtime parsing its model, for
    one) then places its weights on the brk heap, after allocations whose sizes differ from
    one process to the next, and no two instances' weight pages hold the same bytes. Fixing
    the threshold keeps every large buffer page-aligned alike. Call it before the runtime
    loads its model. Setting MALLOC_MMAP_THRESHOLD_ in the environment does the same.
    Raises OSError where the C library has no mallopt() or refuses the value.
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)) != 1:
        raise OSError(errno.ENOSYS, "mallopt(M_MMAP_THRESHOLD) is not available here")


def advise_all_anonymous() -> int:
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


def stats() -> Dict[str, int]:
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
