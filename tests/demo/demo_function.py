# SPDX-License-Identifier: GPL-2.0
"""make demo: the reference workload of UPM, N image-recognition function instances.

Each instance is its own Python interpreter, as in a container: it builds ResNet-50's weights
deterministically (fixed seed, float32, the layout of a framework's state dict: about 100 MB),
loads them into its runtime (ONNX Runtime by default: a model built in memory with the onnx
package and an InferenceSession with one thread; or ResNet-50 written with numpy), answers
a few inference requests, then, after its cold start, calls UPM once through the Python
package (gc.freeze(), upm.advise_all_anonymous()) and answers the same requests again: the
answers must not change, bit for bit.

The driver runs the instances twice in one boot, with UPM off (run=0) and on, starting them
one by one and measuring after each: the sum of their PSS and the VM's used memory. It prints
a table, writes results/demo.json and draws results/demo.png (total memory against instance
count), counts the saving an oracle merging every identical page would reach (from pagemap
frames and page contents), and says how many instances fit in a memory budget.

    demo_function.py [--instances N] [--budget-mib M] [--runtime onnxruntime|numpy] [--out DIR]
"""
import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "userspace", "python"))  # the upm package
SEED = 2023
REQUESTS = 3
IMAGE = 32  # a thumbnail keeps a numpy forward pass quick under software emulation

# ResNet-50: (blocks, width) per stage; bottleneck blocks expand the width by 4.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def resnet50_weights(np):
    """ResNet-50's parameters and batch-norm statistics, He-initialised from SEED."""
    rng = np.random.default_rng(SEED)
    weights = {}

    def conv(name, out_ch, in_ch, k):
        std = np.float32((2.0 / (in_ch * k * k)) ** 0.5)
        weights[name + ".weight"] = rng.standard_normal((out_ch, in_ch, k, k), np.float32) * std

    def bn(name, ch):
        weights[name + ".weight"] = 1 + 0.1 * rng.standard_normal(ch, np.float32)
        weights[name + ".bias"] = 0.1 * rng.standard_normal(ch, np.float32)
        weights[name + ".running_mean"] = 0.1 * rng.standard_normal(ch, np.float32)
        weights[name + ".running_var"] = 1 + rng.random(ch, np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_ch = 64
    for stage, (blocks, width) in enumerate(STAGES, 1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            conv(prefix + ".conv1", width, in_ch, 1)
            bn(prefix + ".bn1", width)
            conv(prefix + ".conv2", width, width, 3)
            bn(prefix + ".bn2", width)
            conv(prefix + ".conv3", width * 4, width, 1)
            bn(prefix + ".bn3", width * 4)
            if block == 0:
                conv(prefix + ".downsample.0", width * 4, in_ch, 1)
                bn(prefix + ".downsample.1", width * 4)
            in_ch = width * 4
    weights["fc.weight"] = rng.standard_normal((1000, in_ch), np.float32) * np.float32(0.01)
    weights["fc.bias"] = np.zeros(1000, np.float32)
    return weights


def resnet50(conv, bn, maxpool, add_relu, head, x):
    """ResNet-50's structure over the operations given, as the numpy forward pass computes it
    and the ONNX graph records it: the stem, the bottleneck blocks, the classifier."""
    x = maxpool(bn(conv(x, "conv1", 2), "bn1"))
    for stage, (blocks, _) in enumerate(STAGES, 1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            stride = 2 if block == 0 and stage > 1 else 1
            out = bn(conv(x, prefix + ".conv1"), prefix + ".bn1")
            out = bn(conv(out, prefix + ".conv2", stride), prefix + ".bn2")
            out = bn(conv(out, prefix + ".conv3"), prefix + ".bn3", relu=False)
            if block == 0:
                x = bn(conv(x, prefix + ".downsample.0", stride), prefix + ".downsample.1",
                       relu=False)
            x = add_relu(out, x)
    return head(x)


def forward(np, w, image):
    """ResNet-50 inference on one (3, H, W) image: the 1000 class scores."""

    def conv(x, name, stride=1):
        kernel = w[name + ".weight"]
        k = kernel.shape[2]
        pad = k // 2
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        ch, h, wd = x.shape
        ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
        s = x.strides
        cols = np.lib.stride_tricks.as_strided(
            x, (ch, k, k, ho, wo), (s[0], s[1], s[2], s[1] * stride, s[2] * stride))
        return np.tensordot(kernel, cols, axes=([1, 2, 3], [0, 1, 2]))

    def bn(x, name, relu=True):
        scale = w[name + ".weight"] / np.sqrt(w[name + ".running_var"] + np.float32(1e-5))
        x = (x - w[name + ".running_mean"][:, None, None]) * scale[:, None, None]
        x = x + w[name + ".bias"][:, None, None]
        return np.maximum(x, 0) if relu else x

    def maxpool(x):
        x = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
        return np.max([x[:, i:i + 2 * ho:2, j:j + 2 * wo:2] for i in range(3) for j in range(3)],
                      axis=0)

    return resnet50(conv, bn, maxpool, lambda out, x: np.maximum(out + x, 0),
                    lambda x: w["fc.weight"] @ x.mean(axis=(1, 2)) + w["fc.bias"], image)


def onnx_model(np, w):
    """The same ResNet-50 as an ONNX graph whose initializers are w: what a model file holds."""
    from onnx import TensorProto, helper, numpy_helper  # pylint: disable=import-outside-toplevel
    nodes, inits = [], [numpy_helper.from_array(a, name) for name, a in w.items()]

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(x, name, stride=1):
        k = w[name + ".weight"].shape[2]
        return node("Conv", [x, name + ".weight"], kernel_shape=[k, k], strides=[stride, stride],
                    pads=[k // 2] * 4)

    def bn(x, name, relu=True):
        x = node("BatchNormalization", [x] + [name + suffix for suffix in
                 (".weight", ".bias", ".running_mean", ".running_var")], epsilon=1e-5)
        return node("Relu", [x]) if relu else x

    def maxpool(x):
        return node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def head(x):
        x = node("Flatten", [node("GlobalAveragePool", [x])])
        nodes.append(helper.make_node("Gemm", [x, "fc.weight", "fc.bias"], ["scores"], transB=1))

    resnet50(conv, bn, maxpool, lambda out, x: node("Relu", [node("Add", [out, x])]), head,
             "image")
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                          [1, 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_onnx_model(np, path):
    """Writes the model file every ONNX Runtime instance loads; returns its parameter count."""
    weights = resnet50_weights(np)
    with open(path, "wb") as f:
        f.write(onnx_model(np, weights).SerializeToString())
    return sum(a.size for a in weights.values())


def onnx_function(np, model_path, prepacking=True, arena=True):
    """A ResNet-50 inference session of ONNX Runtime on one thread, loaded from the model
    file, as a function instance holds it. prepacking=False keeps ONNX Runtime from copying
    the weights into its kernels' packed layouts; arena=False from caching freed buffers in its
    CPU memory arena (see demo_identical_pages.py for what each leaves identical)."""
    import onnxruntime  # pylint: disable=import-outside-toplevel
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = onnxruntime.InferenceSession(model_path, options,
                                           providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image[None]})[0][0]


def numpy_function(np, _model_path):
    """ResNet-50 written with numpy: the weights stay the arrays built from the seed."""
    weights = resnet50_weights(np)
    return lambda image: forward(np, weights, image)


def serve(np, infer):
    """The answers to the fixed requests: top-5 classes and their scores, bit for bit."""
    answers = []
    for request in range(REQUESTS):
        image = np.random.default_rng(1000 + request).standard_normal((3, IMAGE, IMAGE),
                                                                      np.float32)
        scores = infer(image)
        top5 = np.argsort(scores)[::-1][:5]
        answers.append([[int(c), scores[c].tobytes().hex()] for c in top5])
    return answers


def instance(runtime, model_path, default_malloc):
    """One function instance: cold start, requests, UPM, requests again; reports on stdout."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread per instance, as deployed
    import numpy as np  # pylint: disable=import-outside-toplevel
    import upm  # pylint: disable=import-outside-toplevel

    if not default_malloc:
        upm.mmap_large_allocations()  # before the model loads: see the helper's documentation
    infer = (onnx_function if runtime == "onnxruntime" else numpy_function)(np, model_path)
    before = serve(np, infer)
    gc.freeze()
    t0 = time.monotonic()
    advised = upm.advise_all_anonymous()
    advise_ms = (time.monotonic() - t0) * 1e3
    after = serve(np, infer)
    print(json.dumps({"advise_ms": advise_ms, "advised_bytes": advised,
                      "same_answers": before == after, "top1": before[0][0][0]}), flush=True)
    sys.stdin.read()  # stay alive until the driver is done measuring


def commit():
    """The repository's commit, and whether its tree had changes, for the results page."""
    def git(*argv):
        return subprocess.run(["git", "-C", HERE, "-c", "safe.directory=*", *argv],
                              capture_output=True, text=True, check=False).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD")
    return head + ("+changes" if head and git("status", "--porcelain", "--untracked-files=no")
                   else "") if head else "unknown"


def kb_field(path, key):
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def vm_used_kib():
    return kb_field("/proc/meminfo", "MemTotal") - kb_field("/proc/meminfo", "MemAvailable")


def set_run(value):
    with open("/sys/kernel/mm/upm/run", "w", encoding="ascii") as f:
        f.write(str(value))


def run_instances(n, python, runtime, model_path, default_malloc):
    """Starts n instances one by one; after each, the sum of PSS and the VM's used memory."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs, reports, curve = [], [], []
    try:
        for count in range(1, n + 1):
            argv = [python, __file__, "--instance", "--runtime", runtime, "--model", model_path]
            argv += ["--default-malloc"] if default_malloc else []
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                    text=True)
            procs.append(proc)
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"instance {count} exited with {proc.wait()}")
            reports.append(json.loads(line))
            pss = [kb_field(f"/proc/{p.pid}/smaps_rollup", "Pss") for p in procs]
            curve.append({"instances": count, "pss_kib": sum(pss), "vm_used_kib": vm_used_kib()})
            print(f"    {count:2d} instance(s): PSS {sum(pss) / 1024:7.1f} MiB, "
                  f"madvise {reports[-1]['advise_ms']:7.1f} ms", flush=True)
        per_instance = [kb_field(f"/proc/{p.pid}/smaps_rollup", "Pss") for p in procs]
        oracle = oracle_count([p.pid for p in procs])
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait()
    return {"curve": curve, "reports": reports, "per_instance_pss_kib": per_instance,
            "pages": oracle}


def anonymous_ranges(pid):
    import upm  # pylint: disable=import-outside-toplevel
    return upm.anonymous_ranges(f"/proc/{pid}/maps")


def oracle_count(pids):
    """Present private anonymous pages of the instances, their distinct frames, and their
    distinct contents: the memory an oracle merging every identical page would keep."""
    present, frames, contents = 0, set(), set()
    for pid in pids:
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "rb") as mem:
            for start, length in anonymous_ranges(pid):
                pagemap.seek(start // PAGE * 8)
                entries = pagemap.read(length // PAGE * 8)
                for i in range(length // PAGE):
                    entry = int.from_bytes(entries[8 * i:8 * i + 8], "little")
                    if not entry >> 63:
                        continue
                    present += 1
                    frames.add(entry & ((1 << 55) - 1))
                    mem.seek(start + i * PAGE)
                    contents.add(hashlib.blake2b(mem.read(PAGE), digest_size=16).digest())
    return {"present": present, "distinct_frames": len(frames), "distinct_contents": len(contents)}


def fits(curve, budget_kib):
    """How many instances fit in the budget: measured, or extrapolated from the mean cost of
    each instance after the first."""
    inside = [p["instances"] for p in curve if p["pss_kib"] <= budget_kib]
    if len(inside) < len(curve) or len(curve) < 2:
        return (inside[-1] if inside else 0), False
    first, last = curve[0]["pss_kib"], curve[-1]["pss_kib"]
    step = (last - first) / (len(curve) - 1)
    return 1 + int((budget_kib - first) // step), True


def new_figure(path, size):
    """A figure drawn without a display, its matplotlib cache beside the output."""
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.path.dirname(path), ".matplotlib"))
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt.subplots(figsize=size, dpi=120)


def save_figure(fig, ax, path, title):
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot(off, on, path, n, runtime):
    fig, ax = new_figure(path, (7, 4.5))
    for run, label, style in ((off, "UPM off (run=0)", "o-"), (on, "UPM on", "s-")):
        xs = [p["instances"] for p in run["curve"]]
        ax.plot(xs, [p["pss_kib"] / 1024 for p in run["curve"]], style, label=label + ", sum of PSS")
        ax.plot(xs, [p["vm_used_kib"] / 1024 for p in run["curve"]], style[0] + ":",
                alpha=0.6, label=label + ", VM used memory")
    ax.set_xlabel(f"function instances (ResNet-50, {runtime})")
    ax.set_ylabel("memory (MiB)")
    ax.set_xticks(range(1, n + 1))
    save_figure(fig, ax, path, "UPM: memory of N image-recognition function instances")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--instance", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--runtime", choices=("onnxruntime", "numpy"), default="onnxruntime",
                        help="ONNX Runtime's session (default) or ResNet-50 written with numpy")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's mmap threshold dynamic "
                        "(no upm.mmap_large_allocations())")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--budget-mib", type=int, default=1024)
    parser.add_argument("--out", default=os.environ.get("UPM_VM_OUT", ".") + "/results")
    args = parser.parse_args()
    if args.instance:
        instance(args.runtime, args.model, args.default_malloc)
        return 0
    if not os.path.isdir("/sys/kernel/mm/upm"):
        print("demo: the UPM module is not loaded (insmod upm.ko)", file=sys.stderr)
        return 2
    n = args.instances
    runs = {}
    import numpy as np  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        # The model file of a function, in the guest's tmpfs: the same in both runs.
        model_path = os.path.join(tmp, "resnet50.onnx")
        if args.runtime == "onnxruntime":
            params = write_onnx_model(np, model_path)
        else:
            params = sum(a.size for a in resnet50_weights(np).values())
        gc.collect()
        for name, run in (("off", 0), ("on", 1)):
            print(f"  UPM {name}: starting {n} instances", flush=True)
            set_run(run)
            try:
                runs[name] = run_instances(n, sys.executable, args.runtime, model_path,
                                           args.default_malloc)
            finally:
                set_run(1)
    off, on = runs["off"], runs["on"]
    ok = all(r["same_answers"] for run in runs.values() for r in run["reports"])
    ok &= len({r["top1"] for run in runs.values() for r in run["reports"]}) == 1
    pss_off, pss_on = off["curve"][-1]["pss_kib"], on["curve"][-1]["pss_kib"]
    used_off, used_on = off["curve"][-1]["vm_used_kib"], on["curve"][-1]["vm_used_kib"]
    saving = 1 - pss_on / pss_off
    pages = on["pages"]
    upm_saving = 1 - pages["distinct_frames"] / pages["present"]
    oracle_saving = 1 - pages["distinct_contents"] / pages["present"]
    budget = args.budget_mib * 1024
    fit_off, extra_off = fits(off["curve"], budget)
    fit_on, extra_on = fits(on["curve"], budget)
    advise_ms = [r["advise_ms"] for r in on["reports"]]

    print(f"\n{n} instances of ResNet-50 ({params / 1e6:.1f} M float32 parameters, "
          f"{params * 4 / 2**20:.0f} MiB of weights each), {args.runtime}, "
          f"{REQUESTS} requests each")
    print(f"  {'':32s} {'UPM off':>10s} {'UPM on':>10s} {'saving':>8s}")
    print(f"  {'sum of PSS (MiB)':32s} {pss_off / 1024:10.1f} {pss_on / 1024:10.1f} "
          f"{100 * saving:7.1f}%")
    print(f"  {'VM used memory (MiB)':32s} {used_off / 1024:10.1f} {used_on / 1024:10.1f} "
          f"{100 * (1 - used_on / used_off):7.1f}%")
    print(f"  {'PSS per instance (MiB)':32s} {pss_off / n / 1024:10.1f} {pss_on / n / 1024:10.1f}")
    print(f"  {'instances in ' + str(args.budget_mib) + ' MiB':32s} "
          f"{fit_off:>9d}{'*' if extra_off else ' '} {fit_on:>9d}{'*' if extra_on else ' '}"
          "   (* extrapolated from the cost of each added instance)")
    print(f"  madvise per instance: min {min(advise_ms):.0f} ms, median "
          f"{sorted(advise_ms)[n // 2]:.0f} ms, max {max(advise_ms):.0f} ms")
    print(f"  private anonymous pages present: {pages['present']}, in {pages['distinct_frames']} "
          f"frames, {pages['distinct_contents']} distinct contents")
    print(f"  UPM saves {100 * upm_saving:.1f}% of them, an oracle merging every identical page "
          f"{100 * oracle_saving:.1f}%: UPM reaches {100 * upm_saving / oracle_saving:.1f}% of "
          "the oracle")
    print(f"  answers identical before and after merging, in every instance: "
          f"{'yes' if ok else 'NO'}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
              "command": " ".join(["demo_function.py"] + sys.argv[1:]), "instances": n,
              "params": params, "requests": REQUESTS, "off": off, "on": on,
              "saving_pss": saving, "saving_vm_used": 1 - used_on / used_off,
              "upm_page_saving": upm_saving, "oracle_page_saving": oracle_saving,
              "budget_mib": args.budget_mib, "fit_off": fit_off, "fit_on": fit_on,
              "answers_unchanged": ok, "kernel": os.uname().release, "runtime": args.runtime,
              "malloc": "default" if args.default_malloc else "mmap_large_allocations"}
    with open(os.path.join(args.out, "demo.json"), "w", encoding="ascii") as f:
        json.dump(result, f, indent=1)
    plot(off, on, os.path.join(args.out, "demo.png"), n, args.runtime)
    print(f"  wrote {args.out}/demo.json and demo.png")
    return 0 if ok and saving > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
