#!/usr/bin/env python3
"""Render the tables of docs/benchmarks.md from a `theus-bench --json FILE` result.

usage: python3 bench/json2md.py RESULT.json > tables.md

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
    return (f"*Measured on {m['cpu']} ({m['cpu_detail']}), {m['cores']} cores"
            f"{', virtual machine' if m['virtualized'] else ''}, {m['date']}, "
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
           f"| {'add' if add else 'memcpy'} loop GB/s | replay / loop | ceiling GB/s "
           "| theus commit GB/s | commit % of ceiling | commit / loop | stage+commit GB/s |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        rep, loop, com, tx = ms["theus.replay"], ms[base], ms["theus.commit"], ms["theus.tx"]
        ceils = [r for k, r in ms.items() if k.startswith("ceiling.")
                 and r["metrics"].get("is_ceiling", 1)]
        ceil = ceils[0]
        p = rep["params"]
        seg = p["seg_bytes"] if isinstance(p["seg_bytes"], str) else fmt_bytes(p["seg_bytes"])
        unstable = "" if rep["seconds"]["stable"] else " ~"
        out.append(
            f"| {seg} | {fmt_count(p['count'])} | {p['placement']} | "
            f"{fmt_bytes(p['payload_bytes'])} | {gbps(rep):.2f}{unstable} | "
            f"{100 * gbps(rep) / gbps(ceil):.0f}% | "
            f"{rep['items_per_s_median'] * 1e-6:.1f} | {gbps(loop):.2f} | "
            f"{gbps(rep) / gbps(loop):.2f}x | {gbps(ceil):.2f} | {gbps(com):.2f} | "
            f"{100 * gbps(com) / gbps(ceil):.0f}% | {gbps(com) / gbps(loop):.2f}x | "
            f"{gbps(tx):.2f} |")
    skipped = [s["reason"].split(":")[0] for s in d["skipped"]
               if s["scenario"] == scenario and s["target"] == "cpu"]
    if skipped:
        out += ["", "Not run (payload larger than the field): " + "; ".join(skipped) + "."]
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
           "| threads | regions | theus commits/s | conflict rate | stale-base conflicts "
           "| p50 / p99 µs | fairness | mutex commits/s | mutex p50 / p99 µs | theus / mutex |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, ms in cases.items():
        t, m = ms["theus.rmw_commit"], ms["baseline.mutex_rmw"]
        tm, mm = t["metrics"], m["metrics"]
        out.append(
            f"| {t['params']['threads']:.0f} | {t['params']['regions']} | "
            f"{tm['commits_per_s']:,.0f} | {100 * tm['conflict_rate']:.2f}% | "
            f"{tm['stale_base_conflicts']:.0f} | {t['seconds']['median'] * 1e6:.2f} / "
            f"{t['seconds']['p99'] * 1e6:.2f} | {tm['fairness_min_over_max']:.2f} | "
            f"{mm['commits_per_s']:,.0f} | {m['seconds']['median'] * 1e6:.2f} / "
            f"{m['seconds']['p99'] * 1e6:.2f} | {tm['ratio_vs_baseline']:.2f}x |")
    return "\n".join(out) + "\n"


def gpu_provenance(d):
    m = d["machine"]
    return provenance(d)[:-2] + f"; GPU: {m.get('gpu', '?')}.*"


def gpu_table(d, scenario):
    """Every GPU row of a scenario: one line per case and method, with its ratios."""
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
    skipped = [s["reason"] for s in d["skipped"]
               if s["scenario"] == scenario and s["target"] == "gpu"]
    if skipped:
        out += ["", "Not run: " + "; ".join(skipped) + "."]
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        d = json.load(f)
    parts = [("replay.copy", replay_table(d, "replay.copy")),
             ("replay.add", replay_table(d, "replay.add")),
             ("commit.latency", latency_table(d)),
             ("commit.scaling", scaling_table(d)),
             ("commit.contention", contention_table(d))]
    for name, text in parts:
        if text:
            print(f"### {name} (CPU)\n\n{text}")
    for name in ("replay.copy", "replay.add", "commit.latency", "commit.scaling", "stage.h2d"):
        text = gpu_table(d, name)
        if text:
            print(f"### {name} (GPU)\n\n{text}")
    bad = [c for c in d["checks"] if not c["ok"]]
    print(f"Checks: {len(d['checks']) - len(bad)} of {len(d['checks'])} passed; "
          f"status `{d['status']}`.")


if __name__ == "__main__":
    main()
