# SPDX-License-Identifier: GPL-2.0
"""The Python helper in a real Python process: numpy arrays merge after advise_all_anonymous(),
and mmap_large_allocations() keeps large arrays off the heap after a large free."""
import gc
import mmap
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "userspace", "python"))
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


def heap_after_a_large_free(fixed):
    """Whether a 1 MiB array lands on the brk heap once a 4 MiB one was freed (which raises
    glibc's dynamic mmap threshold), in a fresh interpreter."""
    program = f"""
import sys
sys.path[:0] = {sys.path[:1]!r}
import numpy as np, upm
if {fixed}:
    upm.mmap_large_allocations()
big = np.ones(4 << 20, np.uint8)
del big
x = np.ones(1 << 20, np.uint8)
addr = x.__array_interface__["data"][0]
for line in open("/proc/self/maps"):
    fields = line.split()
    start, end = (int(v, 16) for v in fields[0].split("-"))
    if start <= addr < end:
        print(fields[5] if len(fields) > 5 else "anonymous")
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out == "[heap]"


def main():
    assert upm.is_supported(), "module loaded, so UPM must be supported"
    # The premise, then the helper: a large array goes to the heap by default, not after it.
    assert heap_after_a_large_free(False), "glibc kept the 1 MiB array off the heap anyway"
    assert not heap_after_a_large_free(True), "mmap_large_allocations() left it on the heap"
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
    print(f"python: numpy arrays merged ({pages} pages share frames), COW and unmerge ok; "
          "large allocations mapped apart after mmap_large_allocations()")


if __name__ == "__main__":
    main()
