"""Benchmark the PyTorch reference (`hymba.py`, eager, float32) the way `hymba-ref bench` measures
the Rust engine, so the two can be put side by side (`run_benchmarks.py` does that).

For each config × context: random float32 weights in memory (same recipe as the Rust
`RandomWeights`: nothing is downloaded), prefill `context` random token ids, then decode
`--decode-tokens` greedy tokens one at a time with the reference's own hybrid cache
(`hymba.step`: K/V + conv + SSM state). Each config × context is repeated `--runs` times (fewer
if `--time-budget` runs out, never fewer than one); the median time is reported. Each config runs
in a child process so its peak RSS is its own; inside it the peak (VmHWM) is reset after the model
is built and before each context, as the Rust side does.

Kept equal to the Rust side, so the comparison is of the engines, not of the harness:
- Meta tokens: both engines run the M meta tokens once per model and start every sequence from a
  copy of that cache (Rust: `Hymba::new` / `new_sequence`). `hymba.prefill` on an empty cache
  would run them again each time, so prefill here is `run_rows` below: `hymba.run`'s loop over
  `hymba.hybrid_layer` on the prompt rows after a copied meta cache.
- Prefill logits: only the last row is projected onto the vocabulary (Rust:
  `next_token_logits`); `hymba.run` projects every row.
- Decode: `hymba.step` itself, unchanged.
`check_equivalence` verifies on every config up to `--check-max-params` that `run_rows` + `hymba.step` reproduce
`hymba.prefill` + `hymba.step` on a fresh cache.

    .venv/bin/python reference/bench_torch.py --configs small --contexts 128 --runs 3 --out torch.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hymba  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BUILTIN_CONFIGS = REPO / "src" / "bin" / "hymba-ref" / "bench" / "configs"  # small.json, mid.json, 1.5b.json


# ----------------------------------------------------------------------------------------------
# Memory (Linux /proc), as in the Rust benchmark
# ----------------------------------------------------------------------------------------------

def status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def max_rss_bytes() -> int:
    """The process's lifetime peak from getrusage (kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------
# Model with random weights
# ----------------------------------------------------------------------------------------------

def resolve_config(name: str) -> dict:
    path = BUILTIN_CONFIGS / f"{name}.json"
    if not path.exists():
        path = Path(name)
    if not path.exists():
        raise SystemExit(f"--configs: {name!r} is neither a built-in config ({', '.join(sorted(p.stem for p in BUILTIN_CONFIGS.glob('*.json')))}) nor a config.json file")
    return json.loads(path.read_text())


def random_weights(cfg: hymba.HymbaConfig, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of `cfg` (hymba.weight_shapes), float32, with the scales of the Rust
    `RandomWeights` (not its values): linear maps uniform with std 1/sqrt(fan_in), norm weights near
    1, A_log = log(1..N), a dt_proj bias giving Δ in [0.001, 0.1]."""
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, a):  # uniform on [-a, a)
        return torch.empty(shape).uniform_(-a, a, generator=g)

    weights = {}
    for name, shape in hymba.weight_shapes(cfg).items():
        if name.endswith("A_log.0"):
            t = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape).contiguous()
        elif name.endswith("dt_proj.0.bias"):
            dt = torch.exp(math.log(0.001) + torch.rand(shape, generator=g) * (math.log(0.1) - math.log(0.001)))
            t = dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(Δ)
        elif name.endswith("norm.weight") or name.endswith("D.0"):
            t = 1 + uniform(shape, 0.1)
        elif name.endswith(".bias"):
            t = uniform(shape, 0.02)
        else:
            fan_in = 4 if ("embed_tokens" in name or "memory_tokens" in name) else max(1, math.prod(shape[1:]))
            t = uniform(shape, math.sqrt(3 / fan_in))
        weights[name] = t
    return weights


def random_ids(vocab: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


# ----------------------------------------------------------------------------------------------
# Prefill after a precomputed meta-token cache (see the module docstring)
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def run_rows(model: hymba.Hymba, X: torch.Tensor, cache: hymba.HybridCache) -> torch.Tensor:
    """`hymba.run`'s layer loop on rows X (T, H) that follow what `cache` holds; returns the logits
    of the last row only (V,)."""
    cfg = model.cfg
    positions = torch.arange(cache.length, cache.length + X.shape[0])  # (T,)
    kv_bank: dict = {}
    for plan in cfg.layers:
        X, _ = hymba.hybrid_layer(model, plan, X, positions, kv_bank, cache.layers[plan.index])
    cache.length += X.shape[0]
    last = hymba.rms_norm(X[-1:], model.weights["model.final_layernorm.weight"], cfg.rms_norm_eps)
    return hymba.linear(last, model.lm_head)[0]


def meta_cache(model: hymba.Hymba) -> hymba.HybridCache:
    """The cache after the M meta tokens (computed once per model)."""
    cache = hymba.new_cache(model)
    if model.cfg.num_meta > 0:
        run_rows(model, model.weights["model.memory_tokens"], cache)
    return cache


def prefill(model: hymba.Hymba, ids: list[int], meta: hymba.HybridCache) -> tuple[torch.Tensor, hymba.HybridCache]:
    cache = copy.deepcopy(meta)
    X = model.weights["model.embed_tokens.weight"][torch.tensor(ids)]  # (n, H)
    return run_rows(model, X, cache), cache


def check_equivalence(model: hymba.Hymba, meta: hymba.HybridCache) -> float:
    """max |Δ| of prefill (meta cache copy, last row) + 2 steps vs hymba.prefill + hymba.step."""
    ids = random_ids(model.cfg.vocab_size, 6, 99)
    ours, cache = prefill(model, ids[:4], meta)
    rows = [ours] + [hymba.step(model, t, cache) for t in ids[4:]]
    ref_cache = hymba.new_cache(model)
    ref = [hymba.prefill(model, ids[:4], ref_cache)[-1]] + [hymba.step(model, t, ref_cache) for t in ids[4:]]
    return max(float((a - b).abs().max()) for a, b in zip(rows, ref))


def cache_bytes(cache: hymba.HybridCache) -> int:
    """Bytes of K/V, conv and SSM state (positions not counted)."""
    total = 0
    for lc in cache.layers:
        for t in (lc.conv_state, lc.ssm_state, lc.keys, lc.values):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------

def bench_config(name: str, args) -> dict:
    cfg = hymba.HymbaConfig.from_dict(resolve_config(name))
    params = sum(math.prod(s) for s in hymba.weight_shapes(cfg).values())
    print(f"[bench_torch] {name}: generating {params / 1e6:.1f}M random parameters", file=sys.stderr)
    start = time.perf_counter()
    model = hymba.Hymba(cfg, random_weights(cfg, args.seed))
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    meta = meta_cache(model)
    meta_seconds = time.perf_counter() - start
    load_peak = status_bytes("VmHWM")
    # The check reruns the meta tokens through hymba.prefill: skipped on large models, where it
    # would take minutes (the code path is the same for every config).
    err = check_equivalence(model, meta) if params <= args.check_max_params else None
    if err is not None and err > 1e-3:
        raise SystemExit(f"{name}: prefill after the meta cache differs from hymba.prefill by {err}")
    logits, cache = prefill(model, random_ids(cfg.vocab_size, 8, args.seed), meta)  # warm-up
    hymba.step(model, int(logits.argmax()), cache)
    del cache

    contexts = []
    for context in args.contexts:
        ids = random_ids(cfg.vocab_size, context, args.seed + context)
        peak_reset = reset_peak()
        prefill_s, decode_s, size = [], [], 0
        started = time.perf_counter()
        for run in range(1, args.runs + 1):
            start = time.perf_counter()
            logits, cache = prefill(model, ids, meta)
            p = time.perf_counter() - start
            d = 0.0
            for _ in range(args.decode_tokens):
                token = int(logits.argmax())
                start = time.perf_counter()
                logits = hymba.step(model, token, cache)
                d += time.perf_counter() - start
            size = cache_bytes(cache)
            del cache
            print(f"[bench_torch] {name} context {context} run {run}/{args.runs}: prefill {p:.3f} s "
                  f"({context / p:.1f} tok/s), decode {d * 1e3 / args.decode_tokens:.2f} ms/token", file=sys.stderr)
            prefill_s.append(p)
            decode_s.append(d)
            if args.time_budget is not None and time.perf_counter() - started >= args.time_budget:
                break
        p, d = statistics.median(prefill_s), statistics.median(decode_s)
        contexts.append({
            "context": context,
            "runs": len(prefill_s),
            "prefill_seconds": prefill_s,
            "decode_seconds": decode_s,
            "prefill_tok_per_s": context / p,
            "decode_tok_per_s": args.decode_tokens / d,
            "decode_ms_per_step": d * 1e3 / args.decode_tokens,
            "cache_bytes": size,
            "peak_rss_bytes": status_bytes("VmHWM") if peak_reset else None,
        })
    return {
        "name": name,
        "params": params,
        "weight_bytes": sum(t.numel() * t.element_size() for t in model.weights.values()),
        "bytes_per_param": 4.0,
        "load_seconds": load_seconds,
        "meta_tokens_seconds": meta_seconds,
        "load_peak_rss_bytes": load_peak,
        "process_max_rss_bytes": max_rss_bytes(),
        "prefill_check_max_abs_diff": err,
        "contexts": contexts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="small,mid,1.5b", help="built-in small, mid, 1.5b, or config.json paths")
    ap.add_argument("--contexts", default="128,1024,4096")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-max-params", type=float, default=5e8,
                    help="check run_rows against hymba.prefill on configs up to this many parameters")
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    args.contexts = [int(c) for c in args.contexts.split(",") if c]
    if args.runs < 1 or args.decode_tokens < 1 or min(args.contexts) < 1:
        raise SystemExit("--runs, --decode-tokens and every context must be at least 1")
    torch.set_num_threads(args.threads)

    if args.child:
        print(json.dumps({"configs": [bench_config(name, args) for name in args.configs]}))
        return

    load_start = os.getloadavg()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for name in args.configs:
        resolve_config(name)  # fail early on a bad name
    configs = []
    for name in args.configs:
        cmd = [sys.executable, __file__, "--child", "--configs", name, "--threads", str(args.threads),
               "--contexts", ",".join(map(str, args.contexts)), "--runs", str(args.runs),
               "--decode-tokens", str(args.decode_tokens), "--seed", str(args.seed),
               "--check-max-params", str(args.check_max_params)]
        if args.time_budget is not None:
            cmd += ["--time-budget", str(args.time_budget)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, check=True)
        configs.append(json.loads(out.stdout)["configs"][0])
    report = {
        "engine": "pytorch-eager-f32",
        "torch_version": torch.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "time_budget_seconds": args.time_budget,
        "decode_tokens": args.decode_tokens,
        "seed": args.seed,
        "machine": {"cores": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "configs": configs,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
