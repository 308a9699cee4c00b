"""Check hymba.py against the goldens made by the released PyTorch implementation.

Usage (from the repo root):  .venv/bin/python reference/check_conformance.py [CONFORMANCE_DIR]
CONFORMANCE_DIR defaults to ../shared/hymba/conformance relative to the repo root; every
subdirectory holding model/ and goldens.safetensors is checked.

Printed per set, as max |Δ|:
  caseK   logits and every hidden.i (input of layer i, meta rows included; hidden.L = final norm)
  genK    full_logits (full forward over prompt + generated tokens: the truth);
          step_logits for the steps whose query position is still < M+W, where the released cached
          decode agrees with the training mask (past that it deliberately differs, see SPEC.md);
          these are fed the golden tokens. "greedy" = how many generated tokens we reproduce.
  decode  self-test: prefill + single steps against the full forward, far past M+W.
Exits non-zero unless every checked value is <= 1e-4.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import hymba

TOLERANCE = 1e-4
REPO_ROOT = Path(__file__).resolve().parent.parent


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def teacher_forced_decode(model: hymba.Hymba, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits our cache gives before each of `tokens`, feeding the golden tokens: (len(tokens), V)."""
    cache = hymba.new_cache(model)
    rows = [hymba.prefill(model, prompt, cache)[-1]]
    for token in tokens[:-1].tolist():
        rows.append(hymba.step(model, token, cache))
    return torch.stack(rows)


def check_set(set_dir: Path) -> float:
    """Print this set's errors; return the largest checked one."""
    model = hymba.load_model(set_dir / "model")
    cfg = model.cfg
    goldens = load_file(set_dir / "goldens.safetensors")
    print(f"== {set_dir.name}: L={cfg.num_layers} H={cfg.hidden_size} M={cfg.num_meta} W={cfg.sliding_window} "
          f"rope={cfg.rope_type if cfg.rope else 'off'} kq_norm={cfg.kq_norm} mlp={cfg.mlp_act}")
    worst = 0.0

    k = 0
    while f"case{k}.input_ids" in goldens:
        name = f"case{k}"
        result = hymba.forward(model, goldens[f"{name}.input_ids"])
        errors = [max_abs(result.logits, goldens[f"{name}.logits"])]
        errors += [max_abs(h, goldens[f"{name}.hidden.{i}"]) for i, h in enumerate(result.hidden)]
        worst = max(worst, *errors)
        hidden = " ".join(f"{e:.1e}" for e in errors[1:])
        print(f"  {name}  n={result.logits.shape[0]:<3} logits {errors[0]:.1e}  hidden.0..{cfg.num_layers} {hidden}")
        k += 1

    k = 0
    while f"gen{k}.prompt" in goldens:
        name = f"gen{k}"
        prompt, tokens = goldens[f"{name}.prompt"], goldens[f"{name}.tokens"]
        full = hymba.forward(model, torch.cat([prompt, tokens])).logits
        full_error = max_abs(full, goldens[f"{name}.full_logits"])
        # Step s predicts from query position M + len(prompt) - 1 + s; step 0 comes from the prefill.
        agreeing = len(tokens)
        if cfg.sliding_window is not None:
            agreeing = min(agreeing, max(1, cfg.sliding_window - len(prompt) + 1))
        steps = teacher_forced_decode(model, prompt, tokens)
        step_error = max_abs(steps[:agreeing], goldens[f"{name}.step_logits"][:agreeing])
        greedy, _ = hymba.generate_greedy(model, prompt, len(tokens))
        same = next((i for i, (a, b) in enumerate(zip(greedy, tokens.tolist())) if a != b), len(tokens))
        worst = max(worst, full_error, step_error)
        print(f"  {name}  prompt {len(prompt)} + {len(tokens)}  full_logits {full_error:.1e}  "
              f"step_logits[:{agreeing}] {step_error:.1e}  greedy {same}/{len(tokens)} as released")
        k += 1

    n = hymba.decode_invariant_length(cfg)
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    decode_error = hymba.decode_max_error(model, ids, prefill_len=3)
    worst = max(worst, decode_error)
    print(f"  decode self-test  prefill 3 + {n - 3} steps (past M+W = {cfg.num_meta + (cfg.sliding_window or 0)})"
          f" vs full forward {decode_error:.1e}")
    return worst


def main() -> None:
    torch.set_num_threads(1)
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / ".." / "shared" / "hymba" / "conformance"
    sets = sorted(d for d in root.iterdir() if (d / "goldens.safetensors").exists() and (d / "model").is_dir())
    if not sets:
        sys.exit(f"no conformance sets in {root}")
    worst = max(check_set(d) for d in sets)
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    print(f"{verdict}: max |Δ| over {len(sets)} sets = {worst:.2e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
