"""Generate the project's own test fixtures: small random Hymba checkpoints plus goldens from hymba.py.

Usage (from the repo root):  .venv/bin/python reference/make_fixtures.py
Writes tests/fixtures/<name>/{model/config.json, model/*.safetensors, goldens.safetensors}.
Deterministic: fixed seeds, one thread; rerunning gives identical files. Run it only after
check_conformance.py passes.

Each checkpoint uses the released layout and key names, with random weights drawn at scales that
keep activations O(1) (like the released conformance sets), rounded to bf16 values, then stored in
the fixture's dtype. The goldens are computed from the checkpoint as read back from disk, so they
match exactly what a loader sees; their keys are listed in GOLDEN_KEYS. It also writes
tests/fixtures/README.md.
"""

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

import hymba

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
GOLDEN_KEYS = """\
| key | shape | what |
|---|---|---|
| `caseK.input_ids` | (n,) I64 | the tokens |
| `caseK.logits` | (n, V) | logits of the tokens (meta rows dropped) |
| `caseK.hidden.i` | (M+n, H) | input of layer i, meta rows included (`hidden.0` = meta tokens + embeddings); `hidden.L` = after the final norm |
| `caseK.layer{i}.attn` | (M+n, D) | attention heads concatenated, before `pre_avg_layernorm1` |
| `caseK.layer{i}.ssm` | (M+n, D) | SSM heads after the SiLU(z) gate, before `pre_avg_layernorm2` |
| `caseK.layer{i}.fused` | (M+n, H) | the mixer's residual contribution `((norm1(attn) + norm2(ssm)) / 2) · out_projᵀ (+ bias)` |
"""


def released_config(*, vocab, hidden, layers, heads, kv_heads, expand, d_state, d_conv, dt_rank, ffn, mlp,
                    meta, window, global_idx, groups, every, kq_norm, rope, rope_type, max_pos, orig_max,
                    conv_bias, proj_bias, inner_ln, tied, dtype) -> dict:
    """A config.json with every field the released HymbaConfig writes (bookkeeping ones included)."""
    D = expand * hidden
    return {
        "architectures": ["HymbaForCausalLM"], "attention_dropout": 0.0, "attn_hidden_size": -1,
        "attn_implementation": "flex", "attn_implementation_new": "flex", "bos_token_id": 1,
        "calc_logits_for_entire_prompt": False, "conv_dim": {str(i): D for i in range(layers)},
        "eos_token_id": 2, "global_attn_idx": global_idx, "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.1, "intermediate_size": ffn, "kq_head_dim": -1, "kq_norm": kq_norm,
        "kv_reuse_every_i_layer": every, "kv_reuse_group": groups, "kv_weight_reuse": False,
        "layer_type": ["h"] * layers, "mamba_conv_bias": conv_bias, "mamba_d_conv": d_conv,
        "mamba_d_state": d_state, "mamba_dt_rank": dt_rank, "mamba_expand": expand,
        "mamba_inner_layernorms": inner_ln, "mamba_proj_bias": proj_bias, "max_position_embeddings": max_pos,
        "memory_tokens_interspersed_every": 0, "mlp_hidden_act": mlp, "model_type": "hymba",
        "num_attention_heads": heads, "num_experts": 1, "num_experts_per_tok": 1, "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads, "num_mamba": 1, "num_memory_tokens": meta,
        "orig_max_position_embeddings": orig_max, "output_router_logits": False, "pad_token_id": 0,
        "rms_norm_eps": 1e-06, "rope": rope, "rope_theta": 10000.0, "rope_type": rope_type,
        "router_aux_loss_coef": 0.001, "seq_length": 64, "sliding_window": window,
        "tie_word_embeddings": tied, "torch_dtype": dtype, "transformers_version": "4.46.3",
        "use_cache": False, "use_mamba_kernels": True, "v_head_dim": D // heads, "vocab_size": vocab,
    }


# name -> (config, case lengths, shards, what it exercises)
FIXTURES = {
    "silu-groups-default": (
        released_config(vocab=256, hidden=48, layers=5, heads=4, kv_heads=2, expand=2, d_state=8, d_conv=4,
                        dt_rank=4, ffn=64, mlp="silu", meta=3, window=5, global_idx=[0, 4],
                        groups=[[0, 1], [2, 3, 4]], every=-1, kq_norm="none", rope=True, rope_type="default",
                        max_pos=2048, orig_max=2048, conv_bias=True, proj_bias=False, inner_ln=True, tied=True,
                        dtype="bfloat16"),
        [1, 9, 27], 1,
        "SwiGLU MLP; kv_reuse_group with a window layer reading a global producer (1 <- 0) and a global "
        "layer reading a window producer (4 <- 2, group of 3); default RoPE; kq_norm none; tied lm_head; "
        "conv bias and inner layernorms on; nh 4 / nkv 2; K 4, N 8; BF16",
    ),
    "relu2-every-ntk-f16": (
        released_config(vocab=384, hidden=32, layers=5, heads=4, kv_heads=1, expand=2, d_state=4, d_conv=3,
                        dt_rank="auto", ffn=80, mlp="relu2", meta=3, window=5, global_idx=[0, 3],
                        groups=None, every=2, kq_norm="rms", rope=True, rope_type="ntk", max_pos=64,
                        orig_max=16, conv_bias=False, proj_bias=True, inner_ln=False, tied=False,
                        dtype="float16"),
        [1, 8, 27], 1,
        "ReLU² MLP; kv_reuse_every_i_layer = 2 (1 <- 0 window reads global, 3 <- 2 global reads window, "
        "4 a window producer whose cache is trimmed); NTK RoPE; kq_norm rms; untied lm_head; in/out proj "
        "biases; no conv bias; no inner layernorms; mamba_dt_rank auto (= 2); MQA nh 4 / nkv 1; K 3, N 4; F16",
    ),
    "perhead-dynamic-sharded": (
        released_config(vocab=256, hidden=36, layers=3, heads=6, kv_heads=3, expand=2, d_state=16, d_conv=2,
                        dt_rank=3, ffn=48, mlp="silu", meta=5, window=4, global_idx=[1], groups=[[0, 2]],
                        every=-1, kq_norm="perhead-rms", rope=True, rope_type="dynamic_ntk", max_pos=128,
                        orig_max=20, conv_bias=True, proj_bias=False, inner_ln=True, tied=True,
                        dtype="float32"),
        [15, 16, 27], 2,
        "kq_norm perhead-rms; dynamic NTK RoPE with orig_max 20: case0 ends exactly at orig_max (no "
        "scaling), case1 one past it, case2 far past it; a global layer that is not layer 0; window "
        "producer 0 read by window layer 2 (trimmed cache); nh 6 / nkv 3; K 2, N 16; F32 in 2 shards "
        "with model.safetensors.index.json",
    ),
    "norope-nometa-nowindow": (
        released_config(vocab=288, hidden=40, layers=3, heads=5, kv_heads=5, expand=2, d_state=6, d_conv=3,
                        dt_rank="auto", ffn=72, mlp="silu", meta=0, window=None, global_idx=None,
                        groups=None, every=-1, kq_norm="none", rope=False, rope_type="ntk", max_pos=8192,
                        orig_max=2048, conv_bias=True, proj_bias=True, inner_ln=True, tied=False,
                        dtype="bfloat16"),
        [1, 6, 24], 1,
        "rope false (rope_type present but unused); no meta tokens (M = 0, no model.memory_tokens); "
        "sliding_window null (every layer global, global_attn_idx null); no K/V sharing; mamba_dt_rank "
        "auto (= 3); untied lm_head; proj biases; MHA nh = nkv = 5; K 3, N 6; BF16",
    ),
}


def init_weights(cfg: hymba.HymbaConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights for every tensor of the checkpoint, rounded to bf16 values."""

    def normal(shape, std, mean=0.0):
        return mean + std * torch.randn(shape, generator=generator)

    weights = {}
    for name, shape in hymba.weight_shapes(cfg).items():
        if name.endswith("norm.weight"):  # every RMSNorm, q_norm / k_norm included
            w = normal(shape, 0.2, mean=1.0)
        elif name.endswith("A_log.0"):  # Mamba's S4D-real init: A = -(1..N), slightly perturbed
            w = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape) + normal(shape, 0.05)
        elif name.endswith("D.0"):
            w = normal(shape, 0.5, mean=1.0)
        elif name.endswith("dt_proj.0.bias"):  # softplus(bias) = Δ, log-uniform in [0.001, 0.1]
            dt = torch.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * torch.rand(shape, generator=generator))
            w = dt + torch.log(-torch.expm1(-dt))
        elif name.endswith("conv1d.weight"):
            w = normal(shape, 0.3)
        elif name == "model.memory_tokens":
            w = normal(shape, 1.0)
        else:  # linear maps, embedding, lm_head, and the in/out_proj and conv biases
            w = normal(shape, 0.1)
        weights[name] = w.to(torch.bfloat16).to(torch.float32).contiguous()
    return weights


def write_checkpoint(model_dir: Path, config: dict, weights: dict[str, torch.Tensor], shards: int) -> None:
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    stored = {name: w.to(DTYPES[config["torch_dtype"]]) for name, w in weights.items()}
    if shards == 1:
        save_file(stored, model_dir / "model.safetensors", metadata={"format": "pt"})
        return
    names = sorted(stored)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s * len(names) // shards:(s + 1) * len(names) // shards]
        save_file({n: stored[n] for n in part}, model_dir / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in stored.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def goldens_for(model: hymba.Hymba, lengths: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    goldens = {}
    for k, n in enumerate(lengths):
        ids = torch.randint(0, model.cfg.vocab_size, (n,), generator=generator)
        result = hymba.forward(model, ids)
        goldens[f"case{k}.input_ids"] = ids
        goldens[f"case{k}.logits"] = result.logits
        for i, h in enumerate(result.hidden):
            goldens[f"case{k}.hidden.{i}"] = h
        for i, intermediates in enumerate(result.layers):
            for what, tensor in intermediates.items():
                goldens[f"case{k}.layer{i}.{what}"] = tensor
    return {name: t.contiguous() for name, t in goldens.items()}


def make_fixture(index: int, name: str, config: dict, lengths: list[int], shards: int) -> int:
    """Write one fixture directory; returns its size in bytes."""
    out = FIXTURES_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    generator = torch.Generator().manual_seed(1000 + index)
    cfg = hymba.HymbaConfig.from_dict(config)
    write_checkpoint(out / "model", config, init_weights(cfg, generator), shards)

    model = hymba.load_model(out / "model")  # the goldens describe the checkpoint as stored
    goldens = goldens_for(model, lengths, generator)
    save_file(goldens, out / "goldens.safetensors", metadata={"format": "pt"})

    decode_ids = torch.randint(0, cfg.vocab_size, (hymba.decode_invariant_length(cfg),), generator=generator)
    decode_error = hymba.decode_max_error(model, decode_ids, prefill_len=3)
    if decode_error > 1e-4:
        raise SystemExit(f"{name}: cached decode differs from the full forward by {decode_error:.2e}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    last = len(lengths) - 1
    rms = {what: float(goldens[f"case{last}.layer{cfg.num_layers - 1}.{what}"].pow(2).mean().sqrt())
           for what in ("attn", "ssm", "fused")}
    print(f"{name}: {size / 1024:.0f} KiB, cases {lengths}, decode self-test {decode_error:.1e}, last layer rms "
          + " ".join(f"{k} {v:.2f}" for k, v in rms.items()))
    return size


def write_readme(sizes: dict[str, int]) -> None:
    rows = []
    for name, (config, lengths, shards, exercises) in FIXTURES.items():
        files = "1 file" if shards == 1 else f"{shards} shards"
        shape = (f"V {config['vocab_size']}, H {config['hidden_size']}, L {config['num_hidden_layers']}, "
                 f"M {config['num_memory_tokens']}, W {json.dumps(config['sliding_window'])}")
        rows.append(f"| `{name}` | {config['torch_dtype']}, {files} | {sizes[name] / 1024:.0f} KiB | {shape} "
                    f"| {', '.join(map(str, lengths))} | {exercises} |")
    table = "\n".join(rows)
    (FIXTURES_DIR / "README.md").write_text(f"""\
# Test fixtures

Small random Hymba checkpoints in the released layout, with goldens computed by the PyTorch reference
(`reference/hymba.py`, itself checked against the released implementation by
`reference/check_conformance.py`). Generated, deterministic: do not edit by hand. Regenerate from the
repo root (after `check_conformance.py` passes) with

    .venv/bin/python reference/make_fixtures.py

Each `<name>/` holds `model/config.json` (every field of a released config), the weights
(`model/model.safetensors`, or shards listed in `model/model.safetensors.index.json`; random values
rounded to bf16, stored in the dtype below), and `goldens.safetensors` (F32 except the ids), with
cases `case0`, `case1`, ... of the lengths listed. The goldens come from one full forward in float32;
a cached decode (prefill + steps) must reproduce `caseK.logits` too, except for
`perhead-dynamic-sharded` past position 20 (dynamic NTK, see SPEC.md).

{GOLDEN_KEYS}
| fixture | weights | size | shape | case lengths | exercises |
|---|---|---|---|---|---|
{table}
""")


def main() -> None:
    torch.set_num_threads(1)
    sizes = {}
    for index, (name, (config, lengths, shards, _)) in enumerate(FIXTURES.items()):
        sizes[name] = make_fixture(index, name, config, lengths, shards)
    write_readme(sizes)


if __name__ == "__main__":
    main()
