# SPDX-License-Identifier: GPL-2.0
"""Demo: N Python "function instances" load the same numpy model weights, then each calls
upm.advise_all_anonymous() once after start-up, as a runtime would. Prints their memory."""
import gc
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "userspace", "python"))
import numpy as np  # noqa: E402
import upm  # noqa: E402


def pss_anon_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1])
    return 0


def instance(weights_mib, go_r, done_w):
    weights = np.random.default_rng(2023).standard_normal(weights_mib << 17)  # float64
    gc.freeze()
    os.write(done_w, b"l")
    os.read(go_r, 1)
    t0 = time.monotonic()
    upm.advise_all_anonymous()
    ms = (time.monotonic() - t0) * 1e3
    os.write(done_w, f"{ms:.0f}".encode().ljust(8))
    os.read(go_r, 1)
    ok = np.array_equal(weights, np.random.default_rng(2023).standard_normal(weights_mib << 17))
    os._exit(0 if ok else 1)


def main():
    n, mib = int(sys.argv[1]) if len(sys.argv) > 1 else 4, 16
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            instance(mib, go_r, done_w)
        pids.append(pid)
    for _ in range(n):
        os.read(done_r, 1)
    before = sum(pss_anon_kib(p) for p in pids)
    os.write(go_w, b"g" * n)
    times = [os.read(done_r, 8).decode().strip() for _ in range(n)]
    after = sum(pss_anon_kib(p) for p in pids)
    stats = upm.stats()
    os.write(go_w, b"g" * n)
    ok = all(os.waitpid(p, 0)[1] == 0 for p in pids)
    print(f"Python demo: {n} instances with {mib} MiB of numpy weights each, "
          f"advise_all_anonymous() took {', '.join(times)} ms")
    print(f"  Pss_Anon of the instances: {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
          f"({100 * (before - after) / before:.0f}% less); pages_sharing={stats['pages_sharing']}")
    print(f"  weights intact in every instance: {'yes' if ok else 'NO'}")
    sys.exit(0 if ok and after < before else 1)


if __name__ == "__main__":
    main()
