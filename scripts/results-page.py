#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Writes the generated sections of docs/figures.md and README.md from results/*.json.

Each section sits between a begin and an end marker and says when, at which commit and with
which command its figures were measured. Sections whose results file is missing are left as
they are. `--check` fails if a section differs from what its file gives.
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGES = (os.path.join(ROOT, "docs", "figures.md"), os.path.join(ROOT, "README.md"))


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def shown_command(command):
    """The command as a reader would run it: where the guest wrote its files says nothing."""
    words = command.split()
    if "--out" in words:
        i = words.index("--out")
        del words[i:i + 2]
    return " ".join(words)


def demo_section(r):
    off, on = r["off"], r["on"]
    n = r["instances"]
    pss_off, pss_on = off["curve"][-1]["pss_kib"], on["curve"][-1]["pss_kib"]
    used_off, used_on = off["curve"][-1]["vm_used_kib"], on["curve"][-1]["vm_used_kib"]
    advise = sorted(x["advise_ms"] for x in on["reports"])
    pages = on["pages"]
    lines = [
        f"`{shown_command(r['command'])}` in the release VM (kernel {r['kernel']}), {r['date']}, commit "
        f"`{r['commit']}`: {n} instances of ResNet-50 ({r['params'] / 1e6:.1f} M float32 "
        f"parameters) on `{r.get('runtime', 'numpy')}`, malloc: "
        f"`{r.get('malloc', 'default')}`, {r['requests']} requests each before and after "
        "the advice, started one by one with UPM off (`run=0`) and on, in one boot.",
        "",
        "| | UPM off | UPM on | saving |",
        "| --- | --- | --- | --- |",
        f"| sum of PSS, {n} instances | {mib(pss_off)} | {mib(pss_on)} | "
        f"{100 * r['saving_pss']:.1f}% |",
        f"| VM used memory (MemTotal - MemAvailable) | {mib(used_off)} | {mib(used_on)} | "
        f"{100 * r['saving_vm_used']:.1f}% |",
        f"| PSS per instance | {mib(pss_off / n)} | {mib(pss_on / n)} | |",
        f"| instances in {r['budget_mib']} MiB | {r['fit_off']} | {r['fit_on']} | |",
        f"| madvise per instance | | {advise[0]:.0f}-{advise[-1]:.0f} ms, median "
        f"{advise[n // 2]:.0f} ms | |",
        "",
        f"Private anonymous pages present with UPM on: {pages['present']}, on "
        f"{pages['distinct_frames']} frames, {pages['distinct_contents']} distinct contents: "
        f"UPM saves {100 * r['upm_page_saving']:.1f}% of them, an oracle merging every "
        f"identical page {100 * r['oracle_page_saving']:.1f}% (UPM reaches "
        f"{100 * r['upm_page_saving'] / r['oracle_page_saving']:.1f}% of the oracle). Answers "
        "bit-identical before and after merging in every instance: "
        f"{'yes' if r['answers_unchanged'] else 'NO'}.",
    ]
    return "\n".join(lines)


def demo_compare_section(r):
    n = r["instances"]
    lines = [
        f"`{shown_command(r['command'])}` in the release VM (kernel {r['kernel']}), {r['date']}, "
        f"commit `{r['commit']}`: {n} instances of the same function under each strategy in "
        f"turn, in one boot; PSS held {r['hold_s']:.0f} s after the last start, then "
        f"{r['requests']} requests each, then a 32 MiB cache warmed in each (the same in all) "
        "and every instance advised again. Savings against `none`; CPU is ksmd's and the "
        "advisers' time in madvise over the whole run.",
        "",
        "| strategy | sum of PSS | saving | 90% of it: after the first start (the last) "
        "| merging CPU | after requests | diverged | advised again |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in r["strategies"].items():
        t90, last = s["time_to_90pct_s"], s["last_start_s"]
        lines.append(
            f"| {name} | {mib(s['pss_before_requests_kib'])} | {100 * s['saving']:.1f}% | "
            f"{'-' if t90 is None else f'{t90:.0f} s ({max(0.0, t90 - last):.0f} s)'} | "
            f"{s['ksmd_cpu_s'] + s['advise_cpu_s']:.1f} s | "
            f"{100 * s['saving_after_requests']:.1f}% | {100 * s['saving_diverged']:.1f}% | "
            f"{100 * s['saving_remerged']:.1f}% |")
    same = all(s["answers_same"] for s in r["strategies"].values())
    lines += ["", "Answers bit-identical in every instance and strategy: "
              f"{'yes' if same else 'NO'}."]
    if "upm" in r["strategies"]:
        again = sorted(r["strategies"]["upm"]["readvise_ms"])
        lines[-1] += (f" UPM's second advice took {again[0]:.0f}-{again[-1]:.0f} ms per "
                      f"instance (median {again[len(again) // 2]:.0f} ms).")
    return "\n".join(lines)


def rate(s, mib):
    return f"{mib / s:.0f} MiB/s" if s > 0 else "skipped (too little memory)"


def bench_section(r):
    mib, cpus = r["mib"], r["vcpus"]
    upm_full = r["throughput"][-1]["upm_first_s"] + r["throughput"][-1]["upm_second_s"]

    def versus(name, s):
        if s > 0:
            return f"{name} {s:.1f} s ({s / upm_full:.0f}x UPM's time)"
        limit = r["ksm_limit_s"]
        return f"{name} not within {limit} s (over {limit / upm_full:.0f}x UPM's time)"

    lines = [
        f"`upm_bench {mib}` in the release VM (kernel {r['kernel']}, {cpus} vCPUs), "
        f"{r['date']}, commit `{r['commit']}`, one boot.",
        "",
        f"Two processes hold the same {mib} MiB of pseudo-random pages (0%, 50% or 100% of the "
        "second's pages have a twin in the first), one madvise each; KSM unthrottled "
        "(`MADV_MERGEABLE`, 10000 pages a pass, no sleep) merges the same data; the floor is a "
        "userspace xxh64 of both copies plus a compare of each pair (the faster of glibc's "
        "`memcmp` and a word loop: the emulator runs vector code slowly). MiB/s over both "
        "copies:",
        "",
        "| duplicates | UPM | KSM unthrottled | floor | UPM/KSM | UPM/floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in r["throughput"]:
        lines.append(f"| {t['dup_percent']}% | {t['upm_mib_s']:.0f} | {t['ksm_mib_s']:.0f} | "
                     f"{t['floor_mib_s']:.0f} | {t['upm_mib_s'] / t['ksm_mib_s']:.2f}x | "
                     f"{t['upm_mib_s'] / t['floor_mib_s']:.2f}x |")
    lines += [
        "",
        f"Time to fully merged at 100% duplicates: UPM {upm_full:.2f} s; "
        f"{versus('KSM at its defaults (100 pages / 20 ms)', r['ksm_default_s'])}; "
        f"{versus('KSM with `advisor_mode=scan-time`', r['ksm_advisor_s'])}.",
        "",
        f"Advisers at the same moment, {mib // 2} MiB each (MiB/s in all, and against N = 1; "
        f"goal 0.8 x min(N, {cpus})):",
        "",
        "| N | goal | the same weights | their own twins | a domain each |",
        "| --- | --- | --- | --- | --- |",
    ]
    one = r["scaling_s"]["1"]
    for n, times in r["scaling_s"].items():
        cells = [f"{int(n) * mib / 2 / t:.0f} MiB/s, {one[m] / t * int(n):.2f}x"
                 for m, t in enumerate(times)]
        lines.append(f"| {n} | {0.8 * min(int(n), cpus):.1f}x | {' | '.join(cells)} |")
    scenes = r["bystanders_us"]
    lines += ["", "Bystanders (p50 / p99 of one iteration's work, us) while 16 advisers merge "
              "2 GiB of the same weights, and while KSM unthrottled merges it:", "",
              "| scene | seconds | toucher | small adviser |", "| --- | --- | --- | --- |"]
    for name, b in scenes.items():
        lines.append(f"| {name} | {b['seconds']:.1f} | {b['toucher_p50_p99'][0]:.0f} / "
                     f"{b['toucher_p50_p99'][1]:.0f} | {b['small_adviser_p50_p99'][0]:.0f} / "
                     f"{b['small_adviser_p50_p99'][1]:.0f} |")
    cow, slab, small = r["cow_us"], r["slab_bytes_per_page"], r["small_advise_us"]
    large = "; ".join(f"{g} GiB: {rate(t[0], 1024 * int(g))} first, {rate(t[1], 1024 * int(g))} "
                      "second" for g, t in r["large_s"].items())
    lines += [
        "",
        f"- First write to a merged page {cow['merged']:.1f} us, to a fork-shared page "
        f"{cow['fork']:.1f} us ({cow['merged'] / cow['fork']:.2f}x); to a page advised with no "
        f"twin {cow['advised_unique']:.2f} us, never advised {cow['unshared']:.2f} us.",
        f"- Slab bytes per page: a UPM candidate {slab['upm_candidate'][0]:.1f} (module) + "
        f"{slab['upm_candidate'][1]:.1f} (kernel); a merged page, two mappings, "
        f"{slab['upm_merged'][0]:.1f} + {slab['upm_merged'][1]:.1f}; KSM's "
        f"{slab['ksm_merged'][0]:.1f} + {slab['ksm_merged'][1]:.1f}.",
        "- Small advises of unique pages, 4 KiB / 64 KiB a call: " + ", ".join(
            f"`{p}` {v[0]:.1f} / {v[1]:.1f} us" for p, v in small.items()) + ".",
        f"- One process, twin regions of {large}.",
        f"- The second call with `fresh_frame=1`: {r['fresh_frame_second_s']:.2f} s against "
        f"{r['default_second_s']:.2f} s.",
    ]
    return "\n".join(lines)


SECTIONS = {"bench": ("results/bench.json", bench_section),
            "demo": ("results/demo.json", demo_section),
            "demo_compare": ("results/demo_compare.json", demo_compare_section)}


def render(page):
    for name, (path, section) in SECTIONS.items():
        begin = f"<!-- {name}: generated by scripts/results-page.py from {path} -->"
        end = f"<!-- end of {name} -->"
        if begin not in page or not os.path.exists(os.path.join(ROOT, path)):
            continue
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            body = section(json.load(f))
        head, rest = page.split(begin, 1)
        _, tail = rest.split(end, 1)
        page = f"{head}{begin}\n{body}\n{end}{tail}"
    return page


def main():
    stale = []
    for page_path in PAGES:
        with open(page_path, encoding="utf-8") as f:
            page = f.read()
        new = render(page)
        if new == page:
            continue
        if sys.argv[1:] == ["--check"]:
            stale.append(os.path.relpath(page_path, ROOT))
            continue
        with open(page_path, "w", encoding="utf-8") as f:
            f.write(new)
    if stale:
        print(f"{', '.join(stale)} differ from results/*.json: run scripts/results-page.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
