# SPDX-License-Identifier: GPL-2.0
"""make demo-compare: UPM against what an operator would run instead, on the same instances.

Each strategy starts N instances of make demo's function (ONNX Runtime, one model file) one
by one, samples the sum of their PSS from the first start until --hold seconds after the
last, then lets every instance serve --requests requests and measures again:

- none: no merging (the baseline every saving is measured against);
- upm: each instance advises its memory once after its cold start (upm.advise_all_anonymous);
- ksm, ksm-unthrottled, ksm-advisor: each instance calls prctl(PR_SET_MEMORY_MERGE) before
  it loads (no capability needed), ksmd at its defaults (100 pages per 20 ms), unthrottled
  (10000 pages, no sleep), or driven by its scan-time advisor (advisor_mode=scan-time);
- fork: one process loads the model and forks the N instances (a zygote, as prefork servers
  and serverless platforms' warm pools do); the zygote's own PSS is counted.

Then the instances diverge: each warms the same 32 MiB cache after start-up, and is advised
again (which only UPM acts on) and given --rehold seconds.

Reported per strategy: the sum of PSS over time, the final saving against none, the time
from the first start to 90% of that saving, the CPU seconds merging cost over the whole run
(ksmd's, and the advisers' time in madvise), the saving left after the requests, once the
instances diverged, and after the advice again. Writes results/demo_compare.json and
results/demo_compare.png.

    demo_compare.py [--instances N] [--hold S] [--requests R] [--rehold S]
                    [--strategies a,b,...] [--out DIR]
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import demo_function

KSM = "/sys/kernel/mm/ksm/"
UPM = "/sys/kernel/mm/upm/"
PR_SET_MEMORY_MERGE = 67
CACHE_BYTES = 32 << 20  # what each instance warms after start-up, the same in all
CACHE_SEED = 7
SERVE_CHUNK_BATCHES = 4  # batches of demo_function.REQUESTS served between progress lines
STRATEGIES = ("none", "upm", "ksm", "ksm-unthrottled", "ksm-advisor", "fork")
KSM_SETTINGS = {
    "ksm": {"advisor_mode": "none", "pages_to_scan": "100", "sleep_millisecs": "20"},
    "ksm-unthrottled": {"advisor_mode": "none", "pages_to_scan": "10000",
                        "sleep_millisecs": "0"},
    "ksm-advisor": {"advisor_mode": "scan-time", "sleep_millisecs": "20"},
}


def write(path, value):
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def read(path):
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def cpu_seconds(pid):
    """User and system CPU time of a process or kernel thread, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ksmd_pid():
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and read(f"/proc/{pid}/comm") == "ksmd":
                return int(pid)
        except OSError:
            continue
    return None


def serve_commands(np, infer, advise_ms, commands, replies, readvise):
    """An instance's life after its cold start, until its input ends: `serve R` answers R
    requests, `warm` builds a per-request cache (the same 32 MiB in every instance, made
    after start-up: the instances' memory diverges from what they shared), and `advise`
    advises the instance again (UPM only; readvise does it and returns the milliseconds)."""
    replies.write(json.dumps({"advise_ms": advise_ms, "answers": demo_function.serve(np, infer)})
                  + "\n")
    replies.flush()
    caches = []
    for line in commands:
        command = line.split()
        reply = {}
        if command[0] == "serve":
            for _ in range(max(1, -(-int(command[1]) // demo_function.REQUESTS))):
                reply["answers"] = demo_function.serve(np, infer)
        elif command[0] == "warm":
            caches.append(np.random.default_rng(CACHE_SEED).standard_normal(CACHE_BYTES // 8))
        elif command[0] == "advise":
            reply["advise_ms"] = readvise()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def instance(strategy, model_path):
    """One instance started on its own (every strategy but fork)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import upm  # pylint: disable=import-outside-toplevel
    upm.mmap_large_allocations()
    if strategy.startswith("ksm"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MEMORY_MERGE)")
    infer = demo_function.onnx_function(np, model_path)
    demo_function.serve(np, infer)
    gc.freeze()
    def advise():
        if strategy != "upm":
            return 0.0
        t0 = time.monotonic()
        upm.advise_all_anonymous()
        return (time.monotonic() - t0) * 1e3

    serve_commands(np, infer, advise(), sys.stdin, sys.stdout, advise)


def zygote(model_path, fifo_dir):
    """The fork strategy's parent: loads the model once, then forks an instance per `fork`
    line; instance i talks through the FIFOs fifo_dir/i.in and fifo_dir/i.out."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import upm  # pylint: disable=import-outside-toplevel
    upm.mmap_large_allocations()
    infer = demo_function.onnx_function(np, model_path)
    demo_function.serve(np, infer)
    gc.freeze()
    print("ready", flush=True)
    for i, _ in enumerate(sys.stdin):
        base = os.path.join(fifo_dir, str(i))
        pid = os.fork()
        if pid == 0:
            with open(base + ".in", encoding="ascii") as commands, \
                    open(base + ".out", "w", encoding="ascii") as replies:
                serve_commands(np, infer, 0.0, commands, replies, lambda: 0.0)
            os._exit(0)  # pylint: disable=protected-access
        print(pid, flush=True)


class Instance:
    """The driver's handle on one instance: its pid and its command and reply streams."""

    def __init__(self, pid, commands, replies, proc=None):
        self.pid, self.commands, self.replies, self.proc = pid, commands, replies, proc

    def reply(self):
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"instance {self.pid} ended")
        return json.loads(line)

    def send(self, line):
        self.commands.write(line + "\n")
        self.commands.flush()

    def command(self, line):
        self.send(line)
        return self.reply()

    def stop(self):
        self.commands.close()
        if self.proc:
            self.proc.wait()


def command_all(instances, line):
    """Sends a command to every instance before reading any reply: the instances serve their
    requests at the same time, as a fleet does, on every vCPU."""
    for inst in instances:
        inst.send(line)
    return [inst.reply() for inst in instances]


def serve_all(instances, requests, label):
    """Every instance serves `requests` requests at the same time, a few at a time with a
    progress line: 16 instances' 100 requests take a quarter of an hour under emulation, and
    a guest silent that long looks hung. Returns every answer of every instance."""
    batches = max(1, -(-requests // demo_function.REQUESTS))
    answers, t0 = [], time.monotonic()
    for done in range(0, batches, SERVE_CHUNK_BATCHES):
        chunk = min(SERVE_CHUNK_BATCHES, batches - done)
        replies = command_all(instances, f"serve {chunk * demo_function.REQUESTS}")
        answers += [r["answers"] for r in replies]
        print(f"    {label}: {done + chunk} of {batches} batches of {demo_function.REQUESTS} "
              f"requests served by every instance, {time.monotonic() - t0:.0f} s", flush=True)
    return answers


def pss_kib(pids):
    total = 0
    for pid in pids:
        try:
            total += demo_function.kb_field(f"/proc/{pid}/smaps_rollup", "Pss")
        except OSError:
            pass
    return total


def set_strategy(strategy):
    """UPM and ksmd as the strategy wants them, ksmd's earlier merges undone."""
    if os.path.isdir(UPM):
        write(UPM + "run", "1" if strategy == "upm" else "0")
    write(KSM + "run", "2")
    for name, value in KSM_SETTINGS.get(strategy, KSM_SETTINGS["ksm"]).items():
        write(KSM + name, value)
    write(KSM + "run", "1" if strategy.startswith("ksm") else "0")


def run_strategy(strategy, args, model_path, tmp):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    me = [sys.executable, os.path.abspath(__file__)]
    ksmd = ksmd_pid()
    ksmd_cpu = cpu_seconds(ksmd) if ksmd else 0.0
    set_strategy(strategy)
    instances, extra_pids, samples, reports = [], [], [], []
    zyg = None
    t0 = time.monotonic()
    last_sample = -args.sample

    def sample():
        nonlocal last_sample
        now = time.monotonic() - t0
        if now - last_sample >= args.sample:
            pids = [i.pid for i in instances] + extra_pids
            samples.append({"t": round(now, 2), "instances": len(instances),
                            "pss_kib": pss_kib(pids)})
            last_sample = now

    try:
        if strategy == "fork":
            fifo_dir = os.path.join(tmp, "fifos")
            os.makedirs(fifo_dir)
            zyg = subprocess.Popen(me + ["--zygote", model_path, fifo_dir], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=env, text=True)
            if zyg.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the zygote exited with {zyg.wait()}")
            extra_pids.append(zyg.pid)
        for i in range(args.instances):
            if strategy == "fork":
                base = os.path.join(fifo_dir, str(i))
                os.mkfifo(base + ".in")
                os.mkfifo(base + ".out")
                zyg.stdin.write("fork\n")
                zyg.stdin.flush()
                pid = int(zyg.stdout.readline())
                inst = Instance(pid, open(base + ".in", "w", encoding="ascii"),
                                open(base + ".out", encoding="ascii"))
            else:
                proc = subprocess.Popen(me + ["--instance", strategy, model_path],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        text=True)
                inst = Instance(proc.pid, proc.stdin, proc.stdout, proc)
            instances.append(inst)
            reports.append(inst.reply())
            sample()
        last_start = time.monotonic() - t0
        while time.monotonic() - t0 < last_start + args.hold:
            sample()
            time.sleep(0.2)
        before_requests = pss_kib([i.pid for i in instances] + extra_pids)
        answers = serve_all(instances, args.requests, strategy)
        after_requests = pss_kib([i.pid for i in instances] + extra_pids)
        # Divergence: every instance warms the same cache; then each is advised again (a
        # no-op but for UPM), and the strategy gets --rehold seconds to merge it.
        command_all(instances, "warm")
        diverged = pss_kib([i.pid for i in instances] + extra_pids)
        readvise_ms = [inst.command("advise")["advise_ms"] for inst in instances]
        t_warm = time.monotonic()
        while time.monotonic() - t_warm < args.rehold:
            sample()
            time.sleep(0.2)
        remerged = pss_kib([i.pid for i in instances] + extra_pids)
    finally:
        for inst in instances:
            inst.stop()
        if zyg:
            zyg.stdin.close()
            zyg.wait()
            for pid in [i.pid for i in instances]:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        write(KSM + "run", "2")
        write(KSM + "run", "0")
        if os.path.isdir(UPM):
            write(UPM + "run", "1")
    return {
        "samples": samples, "last_start_s": last_start, "pss_before_requests_kib": before_requests,
        "pss_after_requests_kib": after_requests, "pss_diverged_kib": diverged,
        "pss_remerged_kib": remerged, "readvise_ms": readvise_ms,
        "ksmd_cpu_s": (cpu_seconds(ksmd) - ksmd_cpu) if ksmd else 0.0,
        "advise_cpu_s": (sum(r["advise_ms"] for r in reports) + sum(readvise_ms)) / 1e3,
        "answers_same": all(r["answers"] == reports[0]["answers"] for r in reports) and
        all(a == reports[0]["answers"] for a in answers),
    }


def summarise(results):
    """Savings against the strategy without merging, and the time to 90% of each one's."""
    base = results["none"]["pss_before_requests_kib"]
    base_after = results["none"]["pss_after_requests_kib"]
    for r in results.values():
        r["saving"] = 1 - r["pss_before_requests_kib"] / base
        r["saving_after_requests"] = 1 - r["pss_after_requests_kib"] / base_after
        r["saving_diverged"] = 1 - r["pss_diverged_kib"] / results["none"]["pss_diverged_kib"]
        r["saving_remerged"] = 1 - r["pss_remerged_kib"] / results["none"]["pss_remerged_kib"]
        goal = base * (1 - 0.9 * r["saving"])
        full = [s for s in r["samples"] if s["instances"] == max(x["instances"]
                                                                  for x in r["samples"])]
        reached = [s["t"] for s in full if s["pss_kib"] <= goal]
        r["time_to_90pct_s"] = reached[0] if reached and r["saving"] > 0 else None


def plot(results, path, n):
    fig, ax = demo_function.new_figure(path, (8, 4.8))
    for name, r in results.items():
        # No samples while the instances serve and warm their caches: a gap, not a line.
        t, pss, count = [], [], 0
        for s in r["samples"]:
            if t and s["t"] - t[-1] > 10 and s["instances"] == count:
                t.append(float("nan"))
                pss.append(float("nan"))
            t.append(s["t"])
            pss.append(s["pss_kib"] / 1024)
            count = s["instances"]
        ax.plot(t, pss, label=name)
    ax.set_xlabel("seconds since the first instance started")
    ax.set_ylabel(f"sum of PSS of {n} instances (MiB)")
    demo_function.save_figure(fig, ax, path, "ResNet-50 on ONNX Runtime: UPM against KSM and fork")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--instance", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--zygote", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--hold", type=float, default=120, help="seconds after the last start")
    parser.add_argument("--requests", type=int, default=100, help="per instance, at the end")
    parser.add_argument("--sample", type=float, default=2, help="seconds between samples")
    parser.add_argument("--rehold", type=float, default=30,
                        help="seconds given to merge again after the instances diverged")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default=os.environ.get("UPM_VM_OUT", ".") + "/results")
    parser.add_argument("--replot", metavar="JSON", help="only plot a run's demo_compare.json")
    args = parser.parse_args()
    if args.instance:
        instance(*args.instance)
        return 0
    if args.zygote:
        zygote(*args.zygote)
        return 0
    if args.replot:
        with open(args.replot, encoding="ascii") as f:
            run = json.load(f)
        plot(run["strategies"], os.path.join(args.out, "demo_compare.png"), run["instances"])
        return 0
    strategies = args.strategies.split(",")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or "none" not in strategies:
        parser.error(f"strategies: some of {', '.join(STRATEGIES)}, with none")
    if "upm" in strategies and not os.path.isdir(UPM):
        print("demo-compare: the UPM module is not loaded (insmod upm.ko)", file=sys.stderr)
        return 2
    import numpy as np  # pylint: disable=import-outside-toplevel
    results = {}
    # advisor_mode first: the advisor refuses writes to pages_to_scan while it is on.
    tunables = {"advisor_mode": read(KSM + "advisor_mode").split("[")[1].split("]")[0]}
    tunables.update({name: read(KSM + name) for name in ("pages_to_scan", "sleep_millisecs")})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_path = os.path.join(tmp, "resnet50.onnx")
            demo_function.write_onnx_model(np, model_path)
            gc.collect()
            for strategy in strategies:
                print(f"  {strategy}: {args.instances} instances", flush=True)
                results[strategy] = run_strategy(strategy, args, model_path, tmp)
    finally:
        for name, value in tunables.items():  # ksmd as it was (it is left stopped)
            write(KSM + name, value)
    summarise(results)
    n = args.instances
    print(f"\n{n} instances of ResNet-50 on ONNX Runtime; {args.hold:.0f} s held after the "
          f"last start, then {args.requests} requests each")
    print(f"  {'strategy':16s} {'PSS':>10s} {'saving':>7s} {'90% after':>10s} "
          f"{'CPU s':>7s} {'after requests':>15s} {'diverged':>9s} {'advised again':>14s}")
    ok = True
    for name, r in results.items():
        t90 = f"{r['time_to_90pct_s']:.0f} s" if r["time_to_90pct_s"] is not None else "-"
        print(f"  {name:16s} {r['pss_before_requests_kib'] / 1024:7.1f} MiB "
              f"{100 * r['saving']:6.1f}% {t90:>10s} "
              f"{r['ksmd_cpu_s'] + r['advise_cpu_s']:7.1f} "
              f"{100 * r['saving_after_requests']:14.1f}% "
              f"{100 * r['saving_diverged']:8.1f}% {100 * r['saving_remerged']:13.1f}%")
        ok &= r["answers_same"]
    print(f"  answers identical in every instance and strategy: {'yes' if ok else 'NO'}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "demo_compare.json"), "w", encoding="ascii") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "commit": demo_function.commit(),
                   "command": " ".join(["demo_compare.py"] + sys.argv[1:]),
                   "kernel": os.uname().release, "instances": n, "hold_s": args.hold,
                   "requests": args.requests, "strategies": results}, f, indent=1)
    plot(results, os.path.join(args.out, "demo_compare.png"), n)
    print(f"  wrote {args.out}/demo_compare.json and demo_compare.png")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
