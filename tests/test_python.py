# SPDX-License-Identifier: GPL-2.0
"""The Python helper in a real Python process: numpy arrays merge after advise_all_anonymous()."""
import gc
import mmap
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "userspace", "python"))
import numpy as np  # noqa: E402
import upm  # noqa: E402

PAGE = upm.PAGE_SIZE


def pfn(addr):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        entry = struct.unpack("Q", f.read(8))[0]
    return entry & ((1 << 55) - 1) if entry >> 63 else 0


def page_aligned(n):
    """A float64 array from numpy's own allocator, sliced to start on a page boundary, so that
    page i of two such arrays holds the same elements."""
    raw = np.empty(n + PAGE // 8)
    skip = (-raw.__array_interface__["data"][0] % PAGE) // 8
    return raw[skip:skip + n]


def main():
    assert upm.is_supported(), "module loaded, so UPM must be supported"
    # Two "model instances" with the same weights, 8 MiB each, page aligned.
    weights = np.random.default_rng(42).standard_normal(1 << 20).astype(np.float64)
    a = page_aligned(weights.size)
    b = page_aligned(weights.size)
    a[:] = weights
    b[:] = weights
    gc.freeze()
    before = upm.stats()["pages_sharing"]
    advised = upm.advise_all_anonymous()
    assert advised >= a.nbytes + b.nbytes, advised
    start_a = a.__array_interface__["data"][0]
    start_b = b.__array_interface__["data"][0]
    # Large arrays get their own mmap at the same offset into the first page, so page i of
    # one holds the same bytes as page i of the other.
    assert (start_b - start_a) % PAGE == 0, "arrays not equally aligned"
    first = (PAGE - start_a % PAGE) % PAGE
    pages = (a.nbytes - first) // PAGE
    pairs = [(start_a + first + i * PAGE, start_b + first + i * PAGE) for i in range(pages)]
    same = sum(1 for pa, pb in pairs if pfn(pa) and pfn(pa) == pfn(pb))
    assert same == pages, f"{same} of {pages} pages share frames"
    assert upm.stats()["pages_sharing"] - before >= pages
    assert np.array_equal(a, weights) and np.array_equal(b, weights), "contents changed"
    k = first // a.itemsize  # first element of the first whole page
    a[k] += 1.0  # copy-on-write
    assert b[k] == weights[k] and pfn(pairs[0][0]) != pfn(pairs[0][1])
    upm.unmerge(b)
    assert sum(1 for pa, pb in pairs if pfn(pa) == pfn(pb)) == 0, "unmerge left shared frames"
    # What would merge nothing is an error, not a silent no-op.
    for bad in (mmap.mmap(-1, 4 * PAGE), bytearray(100)):
        try:
            upm.advise(bad)
            raise AssertionError(f"advise({type(bad).__name__}) merged nothing and said nothing")
        except ValueError:
            pass
    upm.advise(mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    print(f"python: numpy arrays merged ({pages} pages share frames), COW and unmerge ok")


if __name__ == "__main__":
    main()
