#!/usr/bin/env python3
"""Render the tables of docs/benchmarks.md from a `theus-bench --json FILE` result.

usage: python3 bench/json2md.py [--all-rows] RESULT.json > tables.md

--all-rows: the GPU tables with one line per case and method and every ratio, instead of
one line per cell.

Every table is preceded by the line saying where, when and with which command it was
measured, so that no figure is copied without its provenance."""
import json
import sys


def gbps(r):
    return r["bytes_per_run"] / r["seconds"]["median"] * 1e-9


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1023.5 or unit == "GiB":
            # JSON of older runs kept 9 significant digits: treat near-integers as integers.
            return f"{n:.0f} {unit}" if abs(n - round(n)) < 0.01 else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_count(n):
    n = int(n)
    if n >= 1000000 and n % 1000000 == 0:
        return f"{n // 1000000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def provenance(d):
    m = d["machine"]
    threads = (f", theus replay threads {m['replay_threads']}"
               if "replay_threads" in m else "")
    return (f"*Measured on {m['cpu']} ({m['cpu_detail']}), {m['cores']} cores"
            f"{', virtual machine' if m['virtualized'] else ''}{threads}, {m['date']}, "
            f"theus {m['theus_version']} (git {m['git']}), {m['compiler']} {m['cflags']}; "
            f"command `{d['command']}`; load average {m['loadavg_start']} at start.*")


def rows_of(d, scenario, target="cpu"):
    return [r for r in d["results"] if r["scenario"] == scenario and r["target"] == target]


def by_case(rows):
    cases = {}
    for r in rows:
        cases.setdefault(r["case"], {})[r["method"]] = r
    return cases


def replay_table(d, scenario):
    cases = by_case(rows_of(d, scenario))
    if not cases:
        return ""
    add = scenario == "replay.add"
    base = "baseline.add_loop" if add else "baseline.memcpy_loop"
    out = [provenance(d), "",
           "| segment | count | placement | payload | theus replay GB/s | % of ceiling | Mseg/s "
           f"| threads | {'add' if add else 'memcpy'} loop GB/s | replay / loop | ceiling GB/s "
           "| theus commit GB/s | commit % of ceiling | commit / loop | stage+commit GB/s |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        rep, loop, com, tx = ms["theus.replay"], ms[base], ms["theus.commit"], ms["theus.tx"]
        ceils = [r for k, r in ms.items() if k.startswith("ceiling.")
                 and r["metrics"].get("is_ceiling", 1)]
        ceil = ceils[0]
        p = rep["params"]
        seg = p["seg_bytes"] if isinstance(p["seg_bytes"], str) else fmt_bytes(p["seg_bytes"])
        unstable = "" if rep["seconds"]["stable"] else " ~"
        # Threads of theus's replay for this batch, and of the ceiling when the packed copy
        # split over threads was the fastest (older runs recorded neither).
        thr = p.get("threads", 1)
        cthr = ceil["params"].get("threads", 1)
        cmark = f" ({cthr}t)" if cthr > 1 else ""
        out.append(
            f"| {seg} | {fmt_count(p['count'])} | {p['placement']} | "
            f"{fmt_bytes(p['payload_bytes'])} | {gbps(rep):.2f}{unstable} | "
            f"{100 * gbps(rep) / gbps(ceil):.0f}% | "
            f"{rep['items_per_s_median'] * 1e-6:.1f} | {thr:.0f} | {gbps(loop):.2f} | "
            f"{gbps(rep) / gbps(loop):.2f}x | {gbps(ceil):.2f}{cmark} | {gbps(com):.2f} | "
            f"{100 * gbps(com) / gbps(ceil):.0f}% | {gbps(com) / gbps(loop):.2f}x | "
            f"{gbps(tx):.2f} |")
    skipped = [s["reason"].split(":")[0] for s in d["skipped"]
               if s["scenario"] == scenario and s["target"] == "cpu"]
    if skipped:
        out += ["", "Not run (payload larger than the field): " + "; ".join(skipped) + "."]
    return "\n".join(out) + "\n"


def plan_table(d):
    cases = by_case(rows_of(d, "replay.plan"))
    if not cases:
        return ""
    out = [provenance(d), "",
           "| segment | count | placement | theus plan ns/segment | Mseg/s "
           "| cub args ns/segment | theus / cub args | GPU copy bound at this rate |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        t, c = ms["theus.plan"], ms["baseline.cub_args"]
        p = t["params"]
        nt, nc = t["metrics"]["ns_per_segment"], c["metrics"]["ns_per_segment"]
        out.append(f"| {fmt_bytes(p['segment_bytes'])} | {fmt_count(p['count'])} | "
                   f"{p['placement']} | {nt:.1f} | {1e3 / nt:.1f} | {nc:.1f} | "
                   f"{nc / nt:.2f}x | {t['metrics']['gpu_copy_gbps_bound']:.0f} GB/s |")
    return "\n".join(out) + "\n"


def latency_table(d):
    cases = by_case(rows_of(d, "commit.latency"))
    if not cases:
        return ""
    out = [provenance(d), "",
           "| field | theus begin→commit p10 / p50 / p90 / p99 (ns) | commit call p50 / p99 (ns) "
           "| mutex + store p50 / p99 (ns) | theus / baseline (p50) |",
           "|---|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        t, c, b = ms["theus.tx"]["seconds"], ms["theus.commit_call"]["seconds"], \
            ms["baseline.mutex_store"]["seconds"]
        ns = lambda v: f"{v * 1e9:.0f}"
        out.append(f"| {case} | {ns(t['p10'])} / **{ns(t['median'])}** / {ns(t['p90'])} / "
                   f"{ns(t['p99'])} | {ns(c['median'])} / {ns(c['p99'])} | "
                   f"{ns(b['median'])} / {ns(b['p99'])} | {t['median'] / b['median']:.1f}x |")
    return "\n".join(out) + "\n"


def scaling_table(d):
    rows = rows_of(d, "commit.scaling")
    if not rows:
        return ""
    whole = [r for r in rows if r["method"].startswith("baseline.whole_field_copy")
             and r["metrics"].get("is_baseline", 1)][0]
    w = whole["seconds"]["median"]
    out = [provenance(d), "",
           f"Baseline: copying the whole {fmt_bytes(whole['params']['field_bytes'])} field "
           f"({'in 64 KiB memcpy calls' if 'calls' in whole['method'] else 'one memcpy call'}"
           ", the faster of the two here), "
           f"{w * 1e3:.2f} ms (p10 {whole['seconds']['p10'] * 1e3:.2f}, "
           f"p90 {whole['seconds']['p90'] * 1e3:.2f}), {gbps(whole):.1f} GB/s.", "",
           "| layout | written | delta | deltas | theus commit p50 ms (p10–p90) | % of whole copy "
           "| delta memcpy ms | commit / delta memcpy | stage+commit ms | stage+commit % of whole |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cases = by_case(rows)
    for case, ms in cases.items():
        if "theus.commit" not in ms:
            continue
        c, tx, dm = ms["theus.commit"], ms["theus.tx"], ms["ceiling.delta_memcpy"]
        s = c["seconds"]
        out.append(
            f"| {c['params']['layout']} | {c['params']['fraction'] * 100:.1f}% | "
            f"{fmt_bytes(c['params']['delta_bytes'])} | {c['items_per_run']:.0f} | "
            f"{s['median'] * 1e3:.3f} ({s['p10'] * 1e3:.3f}–{s['p90'] * 1e3:.3f}) | "
            f"**{100 * s['median'] / w:.2f}%** | {dm['seconds']['median'] * 1e3:.3f} | "
            f"{s['median'] / dm['seconds']['median']:.2f}x | "
            f"{tx['seconds']['median'] * 1e3:.3f} | {100 * tx['seconds']['median'] / w:.2f}% |")
    return "\n".join(out) + "\n"


def contention_table(d):
    cases = by_case(rows_of(d, "commit.contention"))
    if not cases:
        return ""
    out = [provenance(d), "",
           "| workers | regions | theus commits/s | conflict rate | false conflicts "
           "| stalled tx: committed / false | p50 / p99 µs | fairness | mutex commits/s "
           "| mutex p50 / p99 µs | theus / mutex |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        t, m = ms["theus.rmw_commit"], ms["baseline.mutex_rmw"]
        tm, mm, p = t["metrics"], m["metrics"], t["params"]
        # Runs before the multi-process variant have only threads (and no "workers").
        kind = p.get("workers", "thread")
        n = p["processes"] if kind == "process" else p["threads"]
        plural = {"thread": "threads", "process": "processes"}[kind] if n != 1 else kind
        out.append(
            f"| {n:.0f} {plural} | {p['regions']} | "
            f"{tm['commits_per_s']:,.0f} | {100 * tm['conflict_rate']:.2f}% | "
            # Runs before the stalled transaction have neither column's figures.
            f"{tm.get('false_conflicts_total', tm['false_conflicts']):.0f} | "
            f"{tm.get('stalled_commits', float('nan')):.0f} / "
            f"{tm.get('stalled_false_conflicts', float('nan')):.0f} | "
            f"{t['seconds']['median'] * 1e6:.2f} / "
            f"{t['seconds']['p99'] * 1e6:.2f} | {tm['fairness_min_over_max']:.2f} | "
            f"{mm['commits_per_s']:,.0f} | {m['seconds']['median'] * 1e6:.2f} / "
            f"{m['seconds']['p99'] * 1e6:.2f} | {tm['ratio_vs_baseline']:.2f}x |")
    return "\n".join(out) + "\n"


def gpu_provenance(d):
    m = d["machine"]
    return provenance(d)[:-2] + f"; GPU: {m.get('gpu', '?')}.*"


def gpu_table(d, scenario):
    """Every GPU row of a scenario: one line per case and method, with its ratios
    (--all-rows)."""
    rows = rows_of(d, scenario, "gpu")
    if not rows:
        return ""
    out = [gpu_provenance(d), "",
           "| case | method | median | p10–p90 | GB/s | items/s | ratios |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["seconds"]
        us = lambda v: f"{v * 1e6:.1f} µs" if v < 1e-3 else f"{v * 1e3:.3f} ms"
        g = f"{gbps(r):.1f}" if r["bytes_per_run"] else ""
        ips = f"{r['items_per_s_median']:,.0f}" if r.get("items_per_s_median") else ""
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in r["metrics"].items()
                           if isinstance(v, (int, float)) and v is not None)
        out.append(f"| {r['case']} | {r['method']} | {us(s['median'])}"
                   f"{'' if s['stable'] else ' ~'} | {us(s['p10'])}–{us(s['p90'])} | {g} | "
                   f"{ips} | {ratios} |")
    return "\n".join(out) + gpu_skipped(d, scenario)


def gpu_skipped(d, scenario):
    skipped = [s["reason"] for s in d["skipped"]
               if s["scenario"] == scenario and s["target"] == "gpu"]
    return "\n" + ("\nNot run: " + "; ".join(skipped) + ".\n" if skipped else "")


def gb(ms, method):
    """GB/s of @method in a cell, with '~' when its median did not settle; '—' if absent."""
    r = ms.get(method)
    if not r:
        return "—"
    return f"{gbps(r):.1f}" + ("" if r["seconds"]["stable"] else " ~")


def gpu_replay_table(d, scenario):
    cases = by_case(rows_of(d, scenario, "gpu"))
    if not cases:
        return ""
    add = scenario == "replay.add"
    if add:
        base = [("add kernel per segment", "baseline.add_kernel_per_segment"),
                ("warp/segment kernel", "baseline.warp_per_segment_kernel")]
    else:
        base = [("cudaMemcpyAsync per segment", "baseline.memcpy_async_loop"),
                ("cudaMemcpyBatchAsync", "baseline.memcpy_batch_async"),
                ("cub Batched", "baseline.cub_memcpy_batched"),
                ("cub Batched, device args", "baseline.cub_memcpy_batched_device_args"),
                ("warp/segment kernel", "baseline.warp_per_segment_kernel")]
    head = ("| segment | count | placement | payload | theus replay GB/s | % of ceiling | Mseg/s "
            "| theus commit GB/s | " + " | ".join(f"{n} GB/s" for n, _ in base)
            + " | ceiling GB/s |" + ("" if add else " theus / best batched |"))
    out = [gpu_provenance(d), "", head,
           "|---|---:|---|---:|" + "---:|" * (5 + len(base)) + ("" if add else "---:|")]
    for case, ms in cases.items():
        rep = ms["theus.replay"]
        ceil = [r for k, r in ms.items() if k.startswith("ceiling.")
                and r["metrics"].get("is_ceiling", 1)][0]
        p = rep["params"]
        seg = p["seg_bytes"] if isinstance(p["seg_bytes"], str) else fmt_bytes(p["seg_bytes"])
        row = (f"| {seg} | {fmt_count(p['count'])} | {p['placement']} | "
               f"{fmt_bytes(p['payload_bytes'])} | {gb(ms, 'theus.replay')} | "
               f"{rep['metrics']['pct_of_ceiling']:.1f}% | "
               f"{rep['items_per_s_median'] * 1e-6:.2f} | {gb(ms, 'theus.commit')} | "
               + " | ".join(gb(ms, m) for _, m in base) + f" | {gbps(ceil):.0f} |")
        if not add:
            rb = rep["metrics"].get("ratio_vs_best_batched")
            row += f" {rb:.2f}x |" if rb is not None else " — |"
        out.append(row)
    return "\n".join(out) + gpu_skipped(d, scenario)


def gpu_latency_table(d):
    cases = by_case(rows_of(d, "commit.latency", "gpu"))
    if not cases:
        return ""
    us = lambda v: f"{v * 1e6:.1f}"
    out = [gpu_provenance(d), "",
           "| field | theus begin→commit, host payload: p10 / p50 / p90 / p99 µs "
           "| commit call p50 / p99 µs | device payload p50 / p99 µs "
           "| 4-byte cudaMemcpy p50 / p99 µs |",
           "|---|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        t, c = ms["theus.tx"]["seconds"], ms["theus.commit_call"]["seconds"]
        dv, b = ms["theus.tx_device_payload"]["seconds"], \
            ms["baseline.cudamemcpy_h2d_4B"]["seconds"]
        out.append(f"| {case} | {us(t['p10'])} / **{us(t['median'])}** / {us(t['p90'])} / "
                   f"{us(t['p99'])} | {us(c['median'])} / {us(c['p99'])} | "
                   f"{us(dv['median'])} / {us(dv['p99'])} | {us(b['median'])} / {us(b['p99'])} |")
    return "\n".join(out) + gpu_skipped(d, "commit.latency")


def gpu_scaling_table(d):
    rows = rows_of(d, "commit.scaling", "gpu")
    if not rows:
        return ""
    whole = [r for r in rows if r["method"].startswith("baseline.whole_field")][0]
    w = whole["seconds"]["median"]
    out = [gpu_provenance(d), "",
           f"Baseline: `cudaMemcpyAsync` of the whole {fmt_bytes(whole['params']['field_bytes'])}"
           f" device field, device to device: {w * 1e3:.3f} ms, {gbps(whole):.0f} GB/s.", "",
           "| layout | written | delta | deltas | theus commit p50 ms (p10–p90) | % of whole copy "
           "| delta cudaMemcpy ms | commit / delta cudaMemcpy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in by_case(rows).items():
        if "theus.commit" not in ms:
            continue
        c, dm = ms["theus.commit"], ms["ceiling.delta_cudamemcpy_d2d"]
        s = c["seconds"]
        out.append(
            f"| {c['params']['layout']} | {c['params']['fraction'] * 100:.1f}% | "
            f"{fmt_bytes(c['params']['delta_bytes'])} | {c['items_per_run']:.0f} | "
            f"{s['median'] * 1e3:.4f} ({s['p10'] * 1e3:.4f}–{s['p90'] * 1e3:.4f}) | "
            f"**{100 * s['median'] / w:.2f}%** | {dm['seconds']['median'] * 1e3:.4f} | "
            f"{s['median'] / dm['seconds']['median']:.2f}x |")
    return "\n".join(out) + gpu_skipped(d, "commit.scaling")


def gpu_stage_table(d):
    # The ratios are computed here: runs before 2026-11-24 07:30 UTC stored them as null.
    cases = by_case(rows_of(d, "stage.h2d", "gpu"))
    if not cases:
        return ""
    out = [gpu_provenance(d), "",
           "| bytes | theus_tx_write GB/s (µs) | write + commit GB/s (µs) "
           "| cudaMemcpy pageable GB/s | cudaMemcpyAsync pinned GB/s "
           "| write / pageable | write / pinned |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        st, sc = ms["theus.stage"], ms["theus.stage_commit"]
        pg, pn = ms["baseline.cudamemcpy_pageable"], ms["baseline.cudamemcpy_pinned"]
        out.append(f"| {case} | {gb(ms, 'theus.stage')} ({st['seconds']['median'] * 1e6:.1f}) | "
                   f"{gb(ms, 'theus.stage_commit')} ({sc['seconds']['median'] * 1e6:.1f}) | "
                   f"{gb(ms, 'baseline.cudamemcpy_pageable')} | "
                   f"{gb(ms, 'baseline.cudamemcpy_pinned')} | "
                   f"{gbps(st) / gbps(pg):.2f}x | {gbps(st) / gbps(pn):.2f}x |")
    return "\n".join(out) + gpu_skipped(d, "stage.h2d")


def main():
    args = [a for a in sys.argv[1:] if a != "--all-rows"]
    all_rows = len(args) != len(sys.argv) - 1
    if len(args) != 1:
        sys.exit(__doc__)
    with open(args[0]) as f:
        d = json.load(f)
    parts = [("replay.copy", replay_table(d, "replay.copy")),
             ("replay.add", replay_table(d, "replay.add")),
             ("replay.plan", plan_table(d)),
             ("commit.latency", latency_table(d)),
             ("commit.scaling", scaling_table(d)),
             ("commit.contention", contention_table(d))]
    for name, text in parts:
        if text:
            print(f"### {name} (CPU)\n\n{text}")
    if all_rows:
        gpu = [(n, gpu_table(d, n)) for n in
               ("replay.copy", "replay.add", "commit.latency", "commit.scaling", "stage.h2d")]
    else:
        gpu = [("replay.copy", gpu_replay_table(d, "replay.copy")),
               ("replay.add", gpu_replay_table(d, "replay.add")),
               ("commit.latency", gpu_latency_table(d)),
               ("commit.scaling", gpu_scaling_table(d)),
               ("stage.h2d", gpu_stage_table(d))]
    for name, text in gpu:
        if text:
            print(f"### {name} (GPU)\n\n{text}")
    bad = [c for c in d["checks"] if not c["ok"]]
    print(f"Checks: {len(d['checks']) - len(bad)} of {len(d['checks'])} passed; "
          f"status `{d['status']}`.")


if __name__ == "__main__":
    main()
