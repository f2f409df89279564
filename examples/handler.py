# SPDX-License-Identifier: GPL-2.0 OR MIT
"""Where a Python function runtime calls UPM: after its cold start, before the first request.

    PYTHONPATH=userspace/python python3 examples/handler.py

Prints "ready PID ADDRESS PAGES" (the weights' buffer) and answers lines on stdin until EOF.
"""

import gc
import os
import sys

import numpy as np

import upm

# Cold start: import the runtime, build what every instance holds the same.
weights = np.random.default_rng(42).standard_normal(4 << 20, dtype=np.float32)  # 16 MiB

# Start-up done: keep the collector from dirtying object pages, then merge.
gc.freeze()
if upm.is_supported():
    upm.advise_all_anonymous()

address = weights.__array_interface__["data"][0]
print("ready", os.getpid(), format(address, "x"), weights.nbytes // upm.PAGE_SIZE, flush=True)
for request in sys.stdin:
    print(request.strip(), "->", float(weights[::1024].sum()), flush=True)
