# SPDX-License-Identifier: GPL-2.0
"""How much of a second function instance's memory is identical to a first one's, by region.

Needs no UPM: it starts two instances of make demo's function (ONNX Runtime or numpy), lets
them load and answer their requests, and compares the contents of every present page of
their private anonymous mappings. By region (the heap, mappings of 1 MiB or more, smaller
ones) it prints how many of the second instance's pages have no identical page in the first:
what no merger could share. Run as root (it reads the instances' pagemap and memory).

    demo_identical_pages.py [--runtime onnxruntime|numpy] [--default-malloc]
                            [--no-prepacking] [--no-arena] [--no-aslr] [--hash-seed N]

--no-aslr and --hash-seed show what stays distinct because of the two things that make every
process's layout its own: address space randomisation (pointers differ) and Python's hash
randomisation (dicts and sets differ). A forked worker inherits both from its parent.
"""
import argparse
import collections
import hashlib
import os
import subprocess
import sys
import tempfile

import demo_function

PAGE = os.sysconf("SC_PAGE_SIZE")


def child(runtime, model_path, default_malloc, session_options):
    import gc  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import upm  # pylint: disable=import-outside-toplevel
    if not default_malloc:
        upm.mmap_large_allocations()
    if runtime == "onnxruntime":
        infer = demo_function.onnx_function(np, model_path, **session_options)
    else:
        infer = demo_function.numpy_function(np, model_path)
    demo_function.serve(np, infer)
    gc.freeze()
    print("ready", flush=True)
    sys.stdin.read()
    return infer  # the model stays loaded until the parent is done


def pages_by_region(pid):
    """(region, page content digest) of every present private anonymous page of pid."""
    names = {}
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
        for line in maps:
            fields = line.split()
            start = int(fields[0].split("-")[0], 16)
            names[start] = fields[5] if len(fields) > 5 else ""
    result = []
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "rb") as mem:
        for start, length in demo_function.anonymous_ranges(pid):
            region = names.get(start) or ("anonymous >= 1 MiB" if length >= 1 << 20
                                          else "anonymous < 1 MiB")
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read(length // PAGE * 8)
            for i in range(length // PAGE):
                if not int.from_bytes(entries[8 * i:8 * i + 8], "little") >> 63:
                    continue
                mem.seek(start + i * PAGE)
                result.append((region, hashlib.blake2b(mem.read(PAGE), digest_size=16).digest()))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runtime", choices=("onnxruntime", "numpy"), default="onnxruntime")
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--no-prepacking", action="store_true",
                        help="ONNX Runtime keeps the weights as loaded, not pre-packed")
    parser.add_argument("--no-arena", action="store_true",
                        help="ONNX Runtime's CPU memory arena off")
    parser.add_argument("--no-aslr", action="store_true",
                        help="instances without address space randomisation (setarch -R)")
    parser.add_argument("--hash-seed", help="PYTHONHASHSEED of both instances")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    session_options = {"prepacking": not args.no_prepacking, "arena": not args.no_arena}
    if args.child is not None:
        child(args.runtime, args.child, args.default_malloc, session_options)
        return 0
    import numpy as np  # pylint: disable=import-outside-toplevel
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if args.hash_seed is not None:
        env["PYTHONHASHSEED"] = args.hash_seed
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "resnet50.onnx")
        if args.runtime == "onnxruntime":
            demo_function.write_onnx_model(np, model)
        argv = ["setarch", os.uname().machine, "-R"] if args.no_aslr else []
        argv += [sys.executable, __file__, "--runtime", args.runtime, "--child", model]
        argv += ["--default-malloc"] if args.default_malloc else []
        argv += ["--no-prepacking"] if args.no_prepacking else []
        argv += ["--no-arena"] if args.no_arena else []
        procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                  text=True) for _ in range(2)]
        try:
            for proc in procs:
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"an instance exited with {proc.wait()}")
            first, second = (pages_by_region(p.pid) for p in procs)
            pss = [demo_function.kb_field(f"/proc/{p.pid}/smaps_rollup", "Pss") for p in procs]
        finally:
            for proc in procs:
                proc.stdin.close()
                proc.wait()
    seen = {digest for _, digest in first}
    total, apart = collections.Counter(), collections.Counter()
    for region, digest in second:
        total[region] += 1
        apart[region] += digest not in seen
    malloc = "default malloc" if args.default_malloc else "mmap_large_allocations()"
    malloc += "".join(f", {name} off" for name, on in session_options.items() if not on)
    malloc += ", no ASLR" if args.no_aslr else ""
    malloc += f", PYTHONHASHSEED={args.hash_seed}" if args.hash_seed is not None else ""
    print(f"{args.runtime}, {malloc}: PSS {pss[0] / 1024:.0f} and {pss[1] / 1024:.0f} MiB")
    for region in sorted(total, key=total.get, reverse=True):
        print(f"  {region:20s} {total[region]:7d} pages, {apart[region]:7d} "
              f"({100 * apart[region] / total[region]:5.1f}%) with no twin in the first")
    all_apart = sum(apart.values())
    print(f"  {'all':20s} {len(second):7d} pages, {all_apart:7d} "
          f"({100 * all_apart / len(second):5.1f}%) with no twin in the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
