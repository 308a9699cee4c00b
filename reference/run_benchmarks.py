"""Run `hymba-ref bench` and `reference/bench_torch.py` on the same configs, contexts and thread
count, and write docs/PERFORMANCE.md: the side-by-side table (ratios, not just times), the
machine's read bandwidth, the decode roofline, and the performance targets with pass/fail.

From the repo root (needs only the standard library; torch runs under --python):

    python3 reference/run_benchmarks.py                       # everything, ~1 h on 2 cores
    python3 reference/run_benchmarks.py --configs small --contexts 128 --runs 1   # a quick check
    python3 reference/run_benchmarks.py --from-json docs/bench   # rewrite the page from saved JSON

The two engines alternate config by config (ours, then torch), so both see similar machine load;
the read bandwidth is measured by the Rust binary before each of its configs and the median is
used. Raw results are saved next to the page (docs/bench/*.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

# The targets (issue 6, performance).
DECODE_VS_TORCH = 2.0  # decode tok/s ≥ 2× PyTorch eager, 1.5B at context 1024
DECODE_ROOFLINE = 0.60  # ≥ 60 % of the bandwidth roofline, 1.5B at context 1024
PREFILL_VS_TORCH = 1.0  # prefill tok/s ≥ 1× PyTorch eager, 1.5B at 1024 tokens
PEAK_MEMORY = 1.15  # peak RSS ≤ 1.15 × (weight bytes + cache bytes), 1.5B
DECODE_FLATNESS = 1.3  # decode time/token at 4096 ≤ 1.3 × at 1024, 1.5B


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_all(args) -> tuple[dict, dict, dict]:
    exe = REPO / "target" / "release" / "hymba-ref"
    if not args.skip_build:
        sh(["cargo", "build", "--release", "--quiet"], cwd=REPO)
    common = ["--contexts", args.contexts, "--threads", str(args.threads), "--runs", str(args.runs),
              "--decode-tokens", str(args.decode_tokens), "--seed", str(args.seed)]
    if args.time_budget is not None:
        common += ["--time-budget", str(args.time_budget)]
    ours, torch, loads = None, None, []
    started = time.time()
    for name in args.configs.split(","):
        loads.append(f"before {name} (ours): {uptime()}")
        out = sh([str(exe), "bench", "--json", "--configs", name, *common], cwd=REPO,
                 stdout=subprocess.PIPE, text=True)
        part = json.loads(out.stdout)
        part["bandwidth_samples"] = [part["bandwidth"]]
        if ours is None:
            ours = part
        else:
            ours["configs"] += part["configs"]
            ours["bandwidth_samples"].append(part["bandwidth"])
        if args.torch_json:
            continue
        loads.append(f"before {name} (torch): {uptime()}")
        out = sh([args.python, str(REPO / "reference" / "bench_torch.py"), "--configs", name, *common], cwd=REPO,
                 stdout=subprocess.PIPE, text=True)
        part = json.loads(out.stdout)
        if torch is None:
            torch = part
        else:
            torch["configs"] += part["configs"]
    if args.torch_json:
        torch = json.loads(Path(args.torch_json).read_text())
        torch["reused_from"] = args.torch_json
        earlier_meta = Path(args.torch_json).with_name("meta.json")
        if "measured" not in torch and earlier_meta.exists():
            earlier = json.loads(earlier_meta.read_text())
            torch["measured"] = f"{earlier['date']}, commit {earlier['commit']}"
    loads.append(f"at the end: {uptime()}")
    if not args.torch_json:
        torch["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    bw = statistics.median(b["read_bytes_per_second"] for b in ours["bandwidth_samples"])
    ours["bandwidth"] = dict(ours["bandwidth_samples"][0], read_bytes_per_second=bw)
    for cfg in ours["configs"]:  # the roofline against the median bandwidth
        roof = bw / cfg["decode_bytes_per_token"]
        cfg["roofline_decode_tok_per_s"] = roof
        for c in cfg["contexts"]:
            c["roofline_fraction"] = c["decode_tok_per_s"] / roof
    meta = {
        "loads": loads,
        "wall_seconds": time.time() - started,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "python": subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "command": "python3 reference/run_benchmarks.py " + " ".join(sys.argv[1:]),
    }
    return ours, torch, meta


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

def fmt(x, digits=1) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}×"


def index(report: dict) -> dict:
    """(config name, context) → (config result, context result)."""
    return {(cfg["name"], c["context"]): (cfg, c) for cfg in report["configs"] for c in cfg["contexts"]}


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**pass**" if ok else "**FAIL**")


def targets(ours: dict, torch: dict) -> list[str]:
    o, t = index(ours), index(torch)
    rows = ["| target | measured | result |", "|---|---|---|"]
    key = ("1.5b", 1024)
    if key in o and key in t:
        cfg, c = o[key]
        r = c["decode_tok_per_s"] / t[key][1]["decode_tok_per_s"]
        rows.append(f"| decode ≥ {DECODE_VS_TORCH:g}× PyTorch eager tok/s (1.5B, context 1024) | "
                    f"{c['decode_tok_per_s']:.2f} vs {t[key][1]['decode_tok_per_s']:.2f} tok/s = {r:.2f}× | "
                    f"{verdict(r >= DECODE_VS_TORCH)} |")
        f = c.get("roofline_fraction")
        rows.append(f"| decode ≥ {DECODE_ROOFLINE:.0%} of the bandwidth roofline (1.5B, context 1024) | "
                    f"{fmt(f and 100 * f)} % of {fmt(cfg.get('roofline_decode_tok_per_s'), 2)} tok/s | "
                    f"{verdict(None if f is None else f >= DECODE_ROOFLINE)} |")
        r = c["prefill_tok_per_s"] / t[key][1]["prefill_tok_per_s"]
        rows.append(f"| prefill ≥ {PREFILL_VS_TORCH:g}× PyTorch eager tok/s (1.5B, 1024 tokens) | "
                    f"{c['prefill_tok_per_s']:.1f} vs {t[key][1]['prefill_tok_per_s']:.1f} tok/s = {r:.2f}× | "
                    f"{verdict(r >= PREFILL_VS_TORCH)} |")
    mem = [(c["context"], c["peak_rss_bytes"] / (cfg["weight_bytes"] + c["cache_bytes"]))
           for (name, _), (cfg, c) in o.items()
           if name == "1.5b" and c.get("peak_rss_bytes") and cfg.get("weight_bytes")]
    if mem:
        worst = max(mem, key=lambda m: m[1])
        bpp = o[("1.5b", mem[0][0])][0]["bytes_per_param"]
        note = "" if bpp < 3 else f" (weights held at {bpp:.2f} B/param: not yet bf16)"
        rows.append(f"| peak RSS ≤ {PEAK_MEMORY:g} × (weight bytes + cache) (1.5B, every context){note} | "
                    + ", ".join(f"{ctx}: {x:.3f}" for ctx, x in mem) + f" (worst {worst[1]:.3f} at {worst[0]}) | "
                    f"{verdict(worst[1] <= PEAK_MEMORY)} |")
    if ("1.5b", 1024) in o and ("1.5b", 4096) in o:
        a, b = o[("1.5b", 1024)][1]["decode_ms_per_step"], o[("1.5b", 4096)][1]["decode_ms_per_step"]
        rows.append(f"| decode time/token at 4096 ≤ {DECODE_FLATNESS:g} × at 1024 (1.5B) | "
                    f"{b:.1f} / {a:.1f} ms = {b / a:.2f}× | {verdict(b / a <= DECODE_FLATNESS)} |")
    if len(rows) == 2:
        rows.append("| (the targets are defined on the 1.5B shape at contexts 1024/4096, not run here) | | |")
    return rows


def write_page(ours: dict, torch: dict, meta: dict, path: Path) -> None:
    o, t = index(ours), index(torch)
    bw = ours.get("bandwidth") or {}
    bws = bw.get("read_bytes_per_second")
    m = ours["machine"]
    lines = [
        "# Performance",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} (commit {meta['commit']}); "
        f"raw results in [`bench/`](bench/). Do not edit by hand: rerun the script "
        f"(it keeps the hand-written sections from *Scaling with cores* on).",
        "",
        "## Machine and settings",
        "",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores, {meta.get('memory_gib')} GiB; Linux {meta.get('kernel')}; "
        f"{meta.get('rustc')}; {meta.get('python')}, torch {torch.get('torch_version')}.",
        f"- Both engines: **{ours['threads']} threads**, random weights generated in memory (seed {ours['seed']}), "
        f"prefill of `context` random token ids after the meta tokens, then {ours['decode_tokens']} greedy decode "
        f"steps; median of up to {ours['runs']} runs"
        + (f" (fewer once a config × context has used {ours['time_budget_seconds']:g} s; the `runs` column says how many)"
           if ours.get("time_budget_seconds") else "") + ".",
        f"- Read bandwidth: **{fmt(bws and bws / 1e9, 2)} GB/s** (median over the runs of the median of 7 passes "
        f"summing a {fmt(bw.get('buffer_bytes', 0) / 2**30, 1)} GiB buffer with all threads).",
        *([f"- **The PyTorch figures are reused** from an earlier run of this script on the same machine and "
           f"settings (`--torch-json {torch['reused_from']}`, measured {torch.get('measured', 'earlier')}): "
           "PyTorch does not depend on this engine's code, but machine load differed between the two runs.",]
          if torch.get("reused_from") else []),
        "- Machine load during the run (the machine is shared; figures are only as steady as this):",
        "",
        *[f"  - {line}" for line in meta.get("loads", [])],
        "",
        f"Total wall time: {meta.get('wall_seconds', 0) / 60:.0f} min.",
        "",
        "## Side by side",
        "",
        "Ratios are ours ÷ PyTorch (higher is better for us). The roofline is the read bandwidth ÷ the weight "
        "bytes a decode step reads (see *What is counted*).",
        "",
        "| config | context | runs (ours/torch) | prefill tok/s ours | torch | ratio | decode tok/s ours | torch | ratio "
        "| ms/token ours | torch | roofline tok/s | % of roofline | peak RSS MiB ours | torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in o:
        cfg, c = o[key]
        tc = t.get(key, (None, {}))[1]
        frac = c.get("roofline_fraction")
        lines.append(
            f"| {key[0]} | {key[1]} | {c['runs']}/{tc.get('runs', '–')} "
            f"| {fmt(c['prefill_tok_per_s'])} | {fmt(tc.get('prefill_tok_per_s'))} "
            f"| {ratio(c['prefill_tok_per_s'], tc.get('prefill_tok_per_s'))} "
            f"| {fmt(c['decode_tok_per_s'], 2)} | {fmt(tc.get('decode_tok_per_s'), 2)} "
            f"| {ratio(c['decode_tok_per_s'], tc.get('decode_tok_per_s'))} "
            f"| {fmt(c['decode_ms_per_step'])} | {fmt(tc.get('decode_ms_per_step'))} "
            f"| {fmt(cfg.get('roofline_decode_tok_per_s'), 2)} | {fmt(frac and 100 * frac)} % "
            f"| {fmt(c.get('peak_rss_bytes') and c['peak_rss_bytes'] / MIB, 0)} "
            f"| {fmt(tc.get('peak_rss_bytes') and tc['peak_rss_bytes'] / MIB, 0)} |")
    lines += ["", "## Targets", "", *targets(ours, torch), "", "## Decode flatness",
              "", "Decode time per token at the longest context ÷ at 1024 (sliding-window layers keep a bounded "
              "cache, so only the global layers' attention should grow):", ""]
    for cfg in ours["configs"]:
        by = {c["context"]: c for c in cfg["contexts"]}
        tcfg = {c["context"]: c for c in next((x for x in torch["configs"] if x["name"] == cfg["name"]), {"contexts": []})["contexts"]}
        longest = max(by)
        if 1024 in by and longest > 1024:
            tr = (f"; torch {tcfg[longest]['decode_ms_per_step'] / tcfg[1024]['decode_ms_per_step']:.2f}×"
                  if 1024 in tcfg and longest in tcfg else "")
            lines.append(f"- {cfg['name']}: {by[longest]['decode_ms_per_step']:.1f} ms at {longest} ÷ "
                         f"{by[1024]['decode_ms_per_step']:.1f} ms at 1024 = "
                         f"**{by[longest]['decode_ms_per_step'] / by[1024]['decode_ms_per_step']:.2f}×**{tr}")
    lines += ["", "## Memory (ours)", "",
              "| config | params | weights MiB (B/param) | context | cache MiB | peak RSS MiB | peak ÷ (weights + cache) | load peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in o:
        cfg, c = o[key]
        peak, w = c.get("peak_rss_bytes"), cfg.get("weight_bytes")
        lines.append(f"| {key[0]} | {cfg['params'] / 1e6:.1f}M | {fmt(w and w / MIB)} ({cfg['bytes_per_param']:.2f}) "
                     f"| {key[1]} | {fmt(c['cache_bytes'] / MIB)} | {fmt(peak and peak / MIB)} "
                     f"| {fmt(peak and w and peak / (w + c['cache_bytes']), 3)} "
                     f"| {fmt(cfg.get('load_peak_rss_bytes') and cfg['load_peak_rss_bytes'] / MIB)} |")
    lines += ["", METHOD]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + kept_sections(path))


HAND_WRITTEN = ("\n## Batched decoding", "\n## Scaling with cores (issue 13)")


def kept_sections(path):
    """The hand-written sections at the end of the current file (from the first heading of
    HAND_WRITTEN on): measured by other commands (`bench --batch-sizes`, `bench --profile`), so a
    rerun of this script keeps them."""
    old = path.read_text() if path.exists() else ""
    starts = [old.index(h) for h in HAND_WRITTEN if h in old]
    return old[min(starts):] if starts else ""


METHOD = """## What is counted

- **Prefill tok/s**: `context` prompt tokens ÷ the time to run them through the model into a fresh
  sequence and produce the next-token logits. Both engines compute the meta tokens once per model and
  start every sequence from a copy of that cache (ours: `Hymba::new` / `new_sequence`; torch:
  `bench_torch.py`'s `meta_cache`), and both project only the last row onto the vocabulary.
- **Decode tok/s**: one token per step through the cache (ours: `next_token_logits(&[id])`; torch:
  `hymba.step` unchanged, with the reference's own K/V + conv + SSM cache), greedy, timed per step
  and summed; decode tokens ÷ that time.
- **Peak RSS**: `VmHWM` from `/proc/self/status`, reset (`/proc/self/clear_refs`) after the model is
  built and before each context, in a fresh process per config: the peak of that context's prefill +
  decode runs, model included. Loading's own peak is the *load peak* column. The torch process also
  carries ~0.6 GB of PyTorch libraries.
- **Weight bytes (ours)**: the RSS the built model adds (after `malloc_trim`), less its meta-token
  cache: the weights as held in memory, whatever their dtype. *B/param* is that ÷ the parameter count.
- **Cache bytes**: K/V rows of every producing layer + conv and scan state of every layer after the
  prefill and the decode steps, counted as f32.
- **Decode roofline**: a decode step reads every weight once: `in_proj`, `x_proj`, `dt_proj`,
  `out_proj`, the MLP, the per-layer vectors, and `lm_head` (the embedding, when tied, as in 1.5B);
  an untied embedding would count one row and the meta tokens count nothing. Bytes per token = those
  parameters × B/param; roofline tok/s = read bandwidth ÷ bytes per token. This share (the
  tables' "% of roofline") leaves out the cache a step reads; since 2026-12-06 `bench` also gives
  `roofline_with_cache_fraction`, which adds it (each layer's K/V rows at the context, a shared
  cache once per layer that reads it, and every layer's SSM and conv states: 149 MB a step for the
  1.5B at context 1024, `cache_read_bytes_per_step`).
- **The PyTorch reference** (`reference/hymba.py`) is used as it is: eager float32, attention as
  full masked (T × S) score matrices per head (sliding-window layers too), the selective scan as a
  Python loop over time steps (not over channels), and a cache that concatenates each step's K/V
  onto the previous tensors. Its per-layer weight lookup (`Hymba.layer` filters the weight dict
  every call) costs a few ms per step, < 1 % of a 1.5B decode step. Nothing was changed for speed.
- **Profiling** one engine's config × context:
  `perf record -g --call-graph dwarf target/release/hymba-ref bench --child --configs 1.5b --contexts 16 --runs 1 --decode-tokens 8`
  (`--child` measures in-process, without the bandwidth pass), then `perf report --children`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="small,mid,1.5b")
    ap.add_argument("--contexts", default="128,1024,4096")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="stop repeating a config × context after this long (at least one run)")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="Python with torch")
    ap.add_argument("--out", default=str(REPO / "docs" / "PERFORMANCE.md"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--torch-json", metavar="FILE",
                    help="do not run PyTorch: reuse its results from an earlier run's torch.json (said on the page)")
    ap.add_argument("--from-json", metavar="DIR", help="only rewrite the page from DIR/{ours,torch,meta}.json")
    args = ap.parse_args()

    out = Path(args.out)
    raw = out.parent / "bench"
    if args.from_json:
        d = Path(args.from_json)
        ours, torch, meta = (json.loads((d / f"{n}.json").read_text()) for n in ("ours", "torch", "meta"))
    else:
        ours, torch, meta = run_all(args)
        raw.mkdir(parents=True, exist_ok=True)
        for name, value in (("ours", ours), ("torch", torch), ("meta", meta)):
            (raw / f"{name}.json").write_text(json.dumps(value, indent=2) + "\n")
    write_page(ours, torch, meta, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
