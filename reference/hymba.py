"""Hymba in plain PyTorch: a readable reference written from SPEC.md.

Hymba ("A Hybrid-head Architecture for Small Language Models", Dong et al., arXiv 2411.13676) runs
attention heads and SSM (Mamba) heads *in parallel* inside every layer, on the same input, and
averages their normalised outputs. Learnable meta tokens are prepended to every sequence, most
layers use sliding-window attention, and neighbouring layers share one set of keys and values.

One function per paper concept:

    prepend_meta_tokens  meta tokens in front of the prompt                   (paper section 2.3)
    rms_norm             RMSNorm
    rope                 rotary position embedding, with the default/ntk/dynamic_ntk bases
    split_in_proj        one input projection feeds both kinds of heads       (paper eq. 1)
    attention_heads      causal, optionally sliding-window, GQA attention
    ssm_heads            causal depthwise conv + Mamba-1 selective scan + SiLU(z) gate
    fuse_heads           mean of the normalised head outputs, then out_proj   (paper eq. 3)
    mlp                  the feed-forward block (SwiGLU or ReLU²)

Everything is computed in float32, one sequence at a time, no batching. `forward` runs a whole
sequence and can report every intermediate; `prefill` / `step` run the same code incrementally on a
`HybridCache`. SPEC.md is the authority; comments say where the released code was consulted because
SPEC is silent.

Run `python hymba.py MODEL_DIR` for a self-test of cached decoding against the full forward.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

KQ_NORMS = ("none", "rms", "perhead-rms")
ROPE_TYPES = ("default", "ntk", "dynamic_ntk")
MLP_ACTS = ("silu", "relu2")


@dataclass(frozen=True)
class LayerPlan:
    """What one layer does, resolved from the config."""

    index: int
    is_global: bool  # full causal attention (else sliding window of W)
    kv_source: int  # layer whose keys/values this layer attends over (itself if it produces them)
    # On a producer whose K/V are read only by window layers: W, the cache keeps the meta rows plus
    # the last W positions. None otherwise (a producer read by a global layer keeps every position;
    # a reusing layer caches no K/V).
    kv_window: int | None

    @property
    def produces_kv(self) -> bool:
        return self.kv_source == self.index


@dataclass(frozen=True)
class HymbaConfig:
    vocab_size: int  # V
    hidden_size: int  # H
    num_layers: int  # L
    num_heads: int  # nh
    num_kv_heads: int  # nkv
    qk_head_dim: int  # dqk
    v_head_dim: int  # dv = D / nh
    ssm_inner: int  # D = mamba_expand * H
    ssm_state: int  # N
    conv_kernel: int  # K
    dt_rank: int  # R
    intermediate_size: int  # F
    num_meta: int  # M
    sliding_window: int | None  # W
    rms_norm_eps: float
    rope: bool
    rope_theta: float
    rope_type: str
    max_position_embeddings: int
    orig_max_position_embeddings: int | None
    kq_norm: str
    mlp_act: str
    conv_bias: bool
    proj_bias: bool
    inner_layernorms: bool
    tie_word_embeddings: bool
    layers: tuple[LayerPlan, ...]

    @staticmethod
    def from_dict(c: dict) -> "HymbaConfig":
        H = c["hidden_size"]
        L = c["num_hidden_layers"]
        nh = c["num_attention_heads"]
        nkv = c["num_key_value_heads"]
        D = int(c["mamba_expand"] * H)

        if c.get("memory_tokens_interspersed_every", 0) > 0:
            raise ValueError("memory_tokens_interspersed_every > 0 is not supported (no released model uses it)")
        if c.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act (the SSM activation) must be silu, got {c['hidden_act']!r}")
        if c.get("kv_weight_reuse", False):
            raise ValueError("kv_weight_reuse = true is not supported (no released model uses it)")
        if c["intermediate_size"] <= 0:
            raise ValueError("intermediate_size must be > 0 (every released layer has its MLP)")

        # Attention widths. The released in_proj always gives q exactly H columns and k
        # nkv/nh * H columns, so explicit attn_hidden_size / kq_head_dim must agree with that.
        attn_hidden = c.get("attn_hidden_size", -1)
        attn_hidden = attn_hidden if attn_hidden > 0 else H
        dqk = c.get("kq_head_dim", -1)
        dqk = dqk if dqk > 0 else attn_hidden // nh
        if attn_hidden != H or nh * dqk != H:
            raise ValueError(f"attention width must be H = {H} = nh * dqk (got attn_hidden_size "
                             f"{attn_hidden}, nh {nh}, dqk {dqk})")
        if nh % nkv != 0 or D % nh != 0:
            raise ValueError(f"need nkv | nh and nh | D (nh {nh}, nkv {nkv}, D {D})")

        dt_rank = c["mamba_dt_rank"]
        dt_rank = math.ceil(H / 16) if dt_rank == "auto" else int(dt_rank)

        kq_norm = c.get("kq_norm", "none") or "none"
        rope_type = c.get("rope_type") or "default"  # released: None means default
        mlp_act = c.get("mlp_hidden_act", "silu")
        for name, value, allowed in (("kq_norm", kq_norm, KQ_NORMS), ("rope_type", rope_type, ROPE_TYPES),
                                     ("mlp_hidden_act", mlp_act, MLP_ACTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        rope = bool(c.get("rope", True))
        orig_max = c.get("orig_max_position_embeddings")
        if rope and rope_type != "default" and not orig_max:
            raise ValueError(f"rope_type {rope_type} needs orig_max_position_embeddings")

        window = c.get("sliding_window")
        # Released: with no sliding window every layer is global and global_attn_idx is unused.
        # (A window with no global_attn_idx crashes the released code; here it means no global layer.)
        global_idx = set(range(L)) if window is None else set(c.get("global_attn_idx") or [])

        return HymbaConfig(
            vocab_size=c["vocab_size"], hidden_size=H, num_layers=L, num_heads=nh, num_kv_heads=nkv,
            qk_head_dim=dqk, v_head_dim=D // nh, ssm_inner=D, ssm_state=c["mamba_d_state"],
            conv_kernel=c["mamba_d_conv"], dt_rank=dt_rank, intermediate_size=c["intermediate_size"],
            num_meta=c.get("num_memory_tokens", 0), sliding_window=window,
            rms_norm_eps=c["rms_norm_eps"], rope=rope, rope_theta=float(c.get("rope_theta", 10000.0)),
            rope_type=rope_type, max_position_embeddings=c["max_position_embeddings"],
            orig_max_position_embeddings=orig_max, kq_norm=kq_norm, mlp_act=mlp_act,
            conv_bias=c["mamba_conv_bias"], proj_bias=c["mamba_proj_bias"],
            inner_layernorms=c["mamba_inner_layernorms"], tie_word_embeddings=c.get("tie_word_embeddings", True),
            layers=plan_layers(L, global_idx, window, c.get("kv_reuse_group"), c.get("kv_reuse_every_i_layer", -1)),
        )


def plan_layers(L: int, global_idx: set[int], window: int | None,
                groups: list[list[int]] | None, every: int) -> tuple[LayerPlan, ...]:
    """Resolve which layer produces the K/V each layer reads, and how much of them a cache keeps."""
    # Who each layer reuses from (None = produces its own K/V).
    reuses: list[int | None] = [None] * L
    if groups is not None:  # released: groups win over kv_reuse_every_i_layer when both are set
        for group in groups:
            producer, *consumers = group
            for i in consumers:
                if not producer < i < L or reuses[i] is not None:
                    raise ValueError(f"bad kv_reuse_group {groups}")
                reuses[i] = producer
    elif every > 0:  # layer i reuses when i % every != 0, from the last producing layer
        for i in range(L):
            if i % every != 0:
                reuses[i] = i - i % every

    def source(i: int) -> int:  # follow reuse chains to the layer that computed the K/V
        return i if reuses[i] is None else source(reuses[i])

    sources = [source(i) for i in range(L)]
    plans = []
    for i in range(L):
        readers = [j for j in range(L) if sources[j] == i]  # empty unless layer i produces K/V
        keeps_window = window is not None and readers and not any(j in global_idx for j in readers)
        plans.append(LayerPlan(index=i, is_global=window is None or i in global_idx, kv_source=sources[i],
                               kv_window=window if keeps_window else None))
    return tuple(plans)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def weight_shapes(cfg: HymbaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint in the released layout, with its shape (PyTorch [out, in])."""
    H, D, N, R, F_ = cfg.hidden_size, cfg.ssm_inner, cfg.ssm_state, cfg.dt_rank, cfg.intermediate_size
    nh, nkv, dqk, dv = cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim, cfg.v_head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, H)}
    if cfg.num_meta > 0:
        shapes["model.memory_tokens"] = (cfg.num_meta, H)
    for plan in cfg.layers:
        p = f"model.layers.{plan.index}."
        P = H + (nkv * dqk + nkv * dv if plan.produces_kv else 0) + D + D
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "mamba.in_proj.weight"] = (P, H)
        if cfg.proj_bias:
            shapes[p + "mamba.in_proj.bias"] = (P,)
        shapes[p + "mamba.conv1d.weight"] = (D, 1, cfg.conv_kernel)
        if cfg.conv_bias:
            shapes[p + "mamba.conv1d.bias"] = (D,)
        shapes[p + "mamba.x_proj.0.weight"] = (R + 2 * N, D)
        shapes[p + "mamba.dt_proj.0.weight"] = (D, R)
        shapes[p + "mamba.dt_proj.0.bias"] = (D,)
        shapes[p + "mamba.A_log.0"] = (D, N)
        shapes[p + "mamba.D.0"] = (D,)
        if cfg.inner_layernorms:
            shapes[p + "mamba.dt_layernorm.weight"] = (R,)
            shapes[p + "mamba.B_layernorm.weight"] = (N,)
            shapes[p + "mamba.C_layernorm.weight"] = (N,)
        shapes[p + "mamba.pre_avg_layernorm1.weight"] = (D,)
        shapes[p + "mamba.pre_avg_layernorm2.weight"] = (D,)
        shapes[p + "mamba.out_proj.weight"] = (H, D)
        if cfg.proj_bias:
            shapes[p + "mamba.out_proj.bias"] = (H,)
        if cfg.kq_norm == "rms":
            shapes[p + "mamba.self_attn.q_norm.weight"] = (dqk,)
            shapes[p + "mamba.self_attn.k_norm.weight"] = (dqk,)  # present (unused) on reusing layers too
        elif cfg.kq_norm == "perhead-rms":
            shapes[p + "mamba.self_attn.q_norm.weight"] = (1, nh, 1, dqk)
            shapes[p + "mamba.self_attn.k_norm.weight"] = (1, nkv, 1, dqk)
        shapes[p + "pre_moe_layernorm.weight"] = (H,)
        if cfg.mlp_act == "silu":
            shapes[p + "moe.experts.0.gate_proj.weight"] = (F_, H)
        shapes[p + "moe.experts.0.up_proj.weight"] = (F_, H)
        shapes[p + "moe.experts.0.down_proj.weight"] = (H, F_)
    shapes["model.final_layernorm.weight"] = (H,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, H)
    return shapes


def load_checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors`, or of the shards named in `model.safetensors.index.json`."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(model_dir / name))
    return tensors


@dataclass
class Hymba:
    cfg: HymbaConfig
    weights: dict[str, torch.Tensor]  # float32, checkpoint names

    def layer(self, i: int) -> dict[str, torch.Tensor]:
        """The weights of layer i, keyed by name without the `model.layers.{i}.` prefix."""
        prefix = f"model.layers.{i}."
        return {k[len(prefix):]: v for k, v in self.weights.items() if k.startswith(prefix)}

    @property
    def lm_head(self) -> torch.Tensor:
        return self.weights["model.embed_tokens.weight" if self.cfg.tie_word_embeddings else "lm_head.weight"]


def load_model(model_dir: str | Path) -> Hymba:
    """Read config.json and the weights (F32/F16/BF16 on disk, float32 in memory); check every shape."""
    model_dir = Path(model_dir)
    cfg = HymbaConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    tensors = load_checkpoint_tensors(model_dir)
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # a tied checkpoint may still store a copy: not read
    expected = weight_shapes(cfg)
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match config: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, expected {shape}")
    return Hymba(cfg, {name: t.to(torch.float32) for name, t in tensors.items()})


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight, over the last axis."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x · weightᵀ (+ bias), weight in PyTorch's [out, in] layout."""
    return F.linear(x, weight, bias)


def prepend_meta_tokens(model: Hymba, ids: torch.Tensor) -> torch.Tensor:
    """[memory_tokens ; embed[ids]]: (M+n, H). The M meta tokens take positions 0..M-1."""
    x = model.weights["model.embed_tokens.weight"][ids]  # (n, H)
    if model.cfg.num_meta == 0:
        return x
    return torch.cat([model.weights["model.memory_tokens"], x])  # (M+n, H)


def rope_base(cfg: HymbaConfig, max_position: int) -> float:
    """The RoPE base for a forward call whose largest position (meta rows included) is max_position."""
    dqk, theta, orig = cfg.qk_head_dim, cfg.rope_theta, cfg.orig_max_position_embeddings
    if cfg.rope_type == "ntk":  # fixed NTK scaling, at every length
        return theta * (2 * cfg.max_position_embeddings / orig - 1) ** (dqk / (dqk - 2))
    if cfg.rope_type == "dynamic_ntk" and max_position + 1 > orig:  # scaling grows with the length
        return theta * (2 * (max_position + 1) / orig - 1) ** (dqk / (dqk - 2))
    return theta


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half (NeoX) RoPE. x (T, heads, dqk), positions (T,)."""
    dqk = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dqk, 2, dtype=torch.float32) / dqk))  # (dqk/2,)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, dqk/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # (T, 1, dqk)
    x1, x2 = x[..., : dqk // 2], x[..., dqk // 2:]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * angles.cos() + rotated_half * angles.sin()


def split_in_proj(cfg: HymbaConfig, plan: LayerPlan, z: torch.Tensor):
    """Split in_proj's output columns, in order: q [H], (k [nkv·dqk], v [nkv·dv] unless the layer
    reuses K/V), x [D] (SSM input), gate [D]. k and v are None on a reusing layer."""
    T = z.shape[0]
    nh, nkv, dqk, dv, D = cfg.num_heads, cfg.num_kv_heads, cfg.qk_head_dim, cfg.v_head_dim, cfg.ssm_inner
    kv_widths = [nkv * dqk, nkv * dv] if plan.produces_kv else []
    parts = list(torch.split(z, [nh * dqk, *kv_widths, D, D], dim=-1))
    q = parts[0].reshape(T, nh, dqk)  # (T, nh, dqk)
    x, gate = parts[-2], parts[-1]  # (T, D), (T, D)
    if not plan.produces_kv:
        return q, None, None, x, gate
    k = parts[1].reshape(T, nkv, dqk)  # (T, nkv, dqk)
    v = parts[2].reshape(T, nkv, dv)  # (T, nkv, dv)
    return q, k, v, x, gate


def kq_normalise(cfg: HymbaConfig, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Optional q_norm / k_norm: an RMSNorm over each head's dqk values. x (T, heads, dqk)."""
    if cfg.kq_norm == "none":
        return x
    # rms: weight (dqk,) shared by all heads; perhead-rms: weight (1, heads, 1, dqk), one per head.
    return rms_norm(x, weight.reshape(-1, cfg.qk_head_dim), cfg.rms_norm_eps)


def attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                    k_pos: torch.Tensor, window: int | None, num_meta: int) -> torch.Tensor:
    """Causal GQA attention without an output projection.

    q (T, nh, dqk) at positions q_pos (T,); k (S, nkv, dqk), v (S, nkv, dv) at positions k_pos (S,).
    Query i may read key j when j <= i and, for a window layer, i - j <= W or j is a meta token.
    Returns the heads concatenated: (T, nh·dv).
    """
    T, nh, dqk = q.shape
    group = nh // k.shape[1]  # query head h reads K/V head h // group
    k = k.repeat_interleave(group, dim=1)  # (S, nh, dqk)
    v = v.repeat_interleave(group, dim=1)  # (S, nh, dv)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(dqk)  # (nh, T, S)
    distance = q_pos[:, None] - k_pos[None, :]  # (T, S)
    allowed = distance >= 0
    if window is not None:
        allowed &= (distance <= window) | (k_pos[None, :] < num_meta)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (nh, T, S)
    out = torch.einsum("hts,shd->thd", probs, v)  # (T, nh, dv)
    return out.reshape(T, -1)  # (T, D)


def causal_conv(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv. x (T, D); conv_state (K-1, D): the x rows before this call (zeros at the
    start); weight (D, 1, K). out_t,c = Σ_k w[c,0,k]·x_{t-K+1+k, c} (+ bias_c).
    Returns (out (T, D), new conv_state (K-1, D))."""
    K = weight.shape[-1]
    padded = torch.cat([conv_state, x])  # (K-1+T, D)
    windows = padded.unfold(0, K, 1)  # (T, D, K): windows[t, c, k] = x_{t-K+1+k, c}
    out = (windows * weight[:, 0, :]).sum(-1)  # (T, D)
    if bias is not None:
        out = out + bias
    return out, padded[padded.shape[0] - (K - 1):]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 recurrence, sequentially. u, delta (T, D); A (D, N); B, C (T, N); D (D,); state (D, N).
    s ← exp(Δ·A) ⊙ s + Δ·u·B;  y = C·s + D·u.  Returns (y (T, D), final state (D, N))."""
    decay = torch.exp(delta[:, :, None] * A[None])  # (T, D, N)
    inject = (delta * u)[:, :, None] * B[:, None, :]  # (T, D, N)
    ys = []
    for t in range(u.shape[0]):
        state = decay[t] * state + inject[t]  # (D, N)
        ys.append(state @ C[t])  # (D,)
    return torch.stack(ys) + D * u, state


def ssm_heads(cfg: HymbaConfig, w: dict[str, torch.Tensor], x: torch.Tensor, gate: torch.Tensor,
              conv_state: torch.Tensor, ssm_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SSM heads of one layer. x, gate (T, D). Returns (y (T, D), new conv_state, new ssm_state)."""
    R, N, eps = cfg.dt_rank, cfg.ssm_state, cfg.rms_norm_eps
    conv, conv_state = causal_conv(x, conv_state, w["mamba.conv1d.weight"], w.get("mamba.conv1d.bias"))
    u = F.silu(conv)  # (T, D)
    dt, B, C = torch.split(linear(u, w["mamba.x_proj.0.weight"]), [R, N, N], dim=-1)  # (T, R), (T, N), (T, N)
    if cfg.inner_layernorms:
        dt = rms_norm(dt, w["mamba.dt_layernorm.weight"], eps)
        B = rms_norm(B, w["mamba.B_layernorm.weight"], eps)
        C = rms_norm(C, w["mamba.C_layernorm.weight"], eps)
    delta = F.softplus(linear(dt, w["mamba.dt_proj.0.weight"], w["mamba.dt_proj.0.bias"]))  # (T, D)
    A = -torch.exp(w["mamba.A_log.0"])  # (D, N)
    y, ssm_state = selective_scan(u, delta, A, B, C, w["mamba.D.0"], ssm_state)  # (T, D)
    return y * F.silu(gate), conv_state, ssm_state


def fuse_heads(cfg: HymbaConfig, w: dict[str, torch.Tensor], attn: torch.Tensor, ssm: torch.Tensor) -> torch.Tensor:
    """Paper eq. 3: mean of the two normalised head outputs (β1, β2 = the norm weights), then out_proj.
    attn, ssm (T, D) -> (T, H): the mixer's contribution to the residual stream."""
    eps = cfg.rms_norm_eps
    mixed = (rms_norm(attn, w["mamba.pre_avg_layernorm1.weight"], eps)
             + rms_norm(ssm, w["mamba.pre_avg_layernorm2.weight"], eps)) / 2  # (T, D)
    return linear(mixed, w["mamba.out_proj.weight"], w.get("mamba.out_proj.bias"))  # (T, H)


def mlp(cfg: HymbaConfig, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """The feed-forward block (`moe.experts.0`; one expert whatever num_experts says). h (T, H)."""
    up = linear(h, w["moe.experts.0.up_proj.weight"])  # (T, F)
    if cfg.mlp_act == "silu":
        inner = F.silu(linear(h, w["moe.experts.0.gate_proj.weight"])) * up
    else:  # relu2
        inner = F.relu(up).square()
    return linear(inner, w["moe.experts.0.down_proj.weight"])  # (T, H)


# ----------------------------------------------------------------------------------------------
# The hybrid cache
# ----------------------------------------------------------------------------------------------

@dataclass
class LayerCache:
    conv_state: torch.Tensor  # (K-1, D): the last K-1 rows of x before the conv
    ssm_state: torch.Tensor  # (D, N)
    # Only on K/V-producing layers (None on reusing ones): rotated keys, values, their positions.
    keys: torch.Tensor | None = None  # (S, nkv, dqk)
    values: torch.Tensor | None = None  # (S, nkv, dv)
    positions: torch.Tensor | None = None  # (S,)


@dataclass
class HybridCache:
    layers: list[LayerCache]
    length: int = 0  # positions consumed so far, meta tokens included


def new_cache(model: Hymba) -> HybridCache:
    cfg = model.cfg
    D, K = cfg.ssm_inner, cfg.conv_kernel
    layers = []
    for plan in cfg.layers:
        lc = LayerCache(conv_state=torch.zeros(K - 1, D), ssm_state=torch.zeros(D, cfg.ssm_state))
        if plan.produces_kv:
            lc.keys = torch.zeros(0, cfg.num_kv_heads, cfg.qk_head_dim)
            lc.values = torch.zeros(0, cfg.num_kv_heads, cfg.v_head_dim)
            lc.positions = torch.zeros(0, dtype=torch.long)
        layers.append(lc)
    return HybridCache(layers)


def keep_for_future_queries(cfg: HymbaConfig, plan: LayerPlan, positions: torch.Tensor, next_position: int) -> torch.Tensor:
    """Which cached K/V rows a later query (at next_position or beyond) can still read: all of them for
    a global reader; else the M meta rows plus the last W positions (the training/prefill mask;
    the released decode keeps one position fewer)."""
    if plan.kv_window is None:
        return torch.ones_like(positions, dtype=torch.bool)
    return (positions < cfg.num_meta) | (positions >= next_position - plan.kv_window)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

@dataclass
class ForwardResult:
    logits: torch.Tensor  # (n, V): rows of the input tokens only
    hidden: list[torch.Tensor]  # L+1 × (rows, H): input of each layer, then the final norm's output
    layers: list[dict[str, torch.Tensor]]  # per layer: attn, ssm (rows, D), fused (rows, H)


def hybrid_layer(model: Hymba, plan: LayerPlan, X: torch.Tensor, positions: torch.Tensor,
                 kv_bank: dict, lc: LayerCache) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One Hymba layer over new rows X (T, H) at `positions`, reading and updating its cache entry.
    kv_bank maps a producing layer to its K/V of this call (past rows included), for the reusers."""
    cfg, w = model.cfg, model.layer(plan.index)
    eps = cfg.rms_norm_eps

    h = rms_norm(X, w["input_layernorm.weight"], eps)  # (T, H)
    q, k, v, x, gate = split_in_proj(cfg, plan, linear(h, w["mamba.in_proj.weight"], w.get("mamba.in_proj.bias")))

    # Attention heads. RoPE's base depends on the largest position in this call (dynamic_ntk).
    base = rope_base(cfg, int(positions[-1]))
    q = kq_normalise(cfg, q, w.get("mamba.self_attn.q_norm.weight"))
    if cfg.rope:
        q = rope(q, positions, base)
    if plan.produces_kv:
        k = kq_normalise(cfg, k, w.get("mamba.self_attn.k_norm.weight"))
        if cfg.rope:
            k = rope(k, positions, base)
        keys, values = torch.cat([lc.keys, k]), torch.cat([lc.values, v])  # (S, nkv, dqk), (S, nkv, dv)
        key_pos = torch.cat([lc.positions, positions])  # (S,)
        kv_bank[plan.index] = (keys, values, key_pos)
        keep = keep_for_future_queries(cfg, plan, key_pos, int(positions[-1]) + 1)
        lc.keys, lc.values, lc.positions = keys[keep], values[keep], key_pos[keep]
    else:  # reuse the producer's rotated K/V unchanged; this layer's own k_norm is never used
        keys, values, key_pos = kv_bank[plan.kv_source]
    window = None if plan.is_global else cfg.sliding_window
    attn = attention_heads(q, keys, values, positions, key_pos, window, cfg.num_meta)  # (T, D)

    # SSM heads, on the same input, in parallel.
    ssm, lc.conv_state, lc.ssm_state = ssm_heads(cfg, w, x, gate, lc.conv_state, lc.ssm_state)  # (T, D)

    fused = fuse_heads(cfg, w, attn, ssm)  # (T, H)
    X = X + fused
    X = X + mlp(cfg, w, rms_norm(X, w["pre_moe_layernorm.weight"], eps))
    return X, {"attn": attn, "ssm": ssm, "fused": fused}


def run(model: Hymba, ids: torch.Tensor, cache: HybridCache) -> ForwardResult:
    """Feed the tokens `ids` (n,) after what `cache` holds; on an empty cache the meta tokens go first.
    Returns logits for the n tokens and every intermediate of this call (meta rows included)."""
    cfg = model.cfg
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("need at least one token")
    X = prepend_meta_tokens(model, ids) if cache.length == 0 else model.weights["model.embed_tokens.weight"][ids]
    positions = torch.arange(cache.length, cache.length + X.shape[0])  # (T,)
    hidden, layers = [], []
    kv_bank: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for plan in cfg.layers:
        hidden.append(X)
        X, intermediates = hybrid_layer(model, plan, X, positions, kv_bank, cache.layers[plan.index])
        layers.append(intermediates)
    X = rms_norm(X, model.weights["model.final_layernorm.weight"], cfg.rms_norm_eps)
    hidden.append(X)
    cache.length += X.shape[0]
    logits = linear(X[X.shape[0] - ids.numel():], model.lm_head)  # (n, V): meta rows dropped
    return ForwardResult(logits, hidden, layers)


@torch.no_grad()
def forward(model: Hymba, ids) -> ForwardResult:
    """Full forward over one sequence: logits (n, V), hidden states and per-layer intermediates."""
    return run(model, ids, new_cache(model))


@torch.no_grad()
def prefill(model: Hymba, ids, cache: HybridCache) -> torch.Tensor:
    """Feed a prompt (or a further chunk) into the cache; returns its logits (n, V)."""
    return run(model, ids, cache).logits


@torch.no_grad()
def step(model: Hymba, token: int, cache: HybridCache) -> torch.Tensor:
    """Feed one token into a non-empty cache; returns its logits (V,)."""
    if cache.length == 0:
        raise ValueError("step needs a prefilled cache")
    return run(model, [token], cache).logits[0]


def generate_greedy(model: Hymba, prompt, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy continuation with the cache. Returns the `steps` new tokens and the logits each was
    chosen from (steps, V), like the released generate()."""
    cache = new_cache(model)
    logits = prefill(model, prompt, cache)[-1]
    tokens, chosen_from = [], []
    for s in range(steps):
        chosen_from.append(logits)
        tokens.append(int(logits.argmax()))
        if s + 1 < steps:
            logits = step(model, tokens[-1], cache)
    return tokens, torch.stack(chosen_from)


# ----------------------------------------------------------------------------------------------
# Self-test: cached decoding reproduces the full forward
# ----------------------------------------------------------------------------------------------

def decode_invariant_length(cfg: HymbaConfig) -> int:
    """A test length far past M+W, but (dynamic_ntk) no past orig_max, where decode must differ."""
    n = max(3 * (cfg.num_meta + (cfg.sliding_window or 0)) + 5, 24)
    if cfg.rope and cfg.rope_type == "dynamic_ntk":
        n = min(n, cfg.orig_max_position_embeddings - cfg.num_meta)
    return n


def decode_max_error(model: Hymba, ids: torch.Tensor, prefill_len: int) -> float:
    """max |Δ| between full-forward logits and prefill(ids[:prefill_len]) + one step per later token.
    Also checks that every window-only producer's cache stays within M + W rows."""
    full = forward(model, ids).logits
    cache = new_cache(model)
    rows = [prefill(model, ids[:prefill_len], cache)]
    for token in ids[prefill_len:].tolist():
        rows.append(step(model, token, cache)[None])
        for plan in model.cfg.layers:
            if plan.kv_window is not None:
                assert cache.layers[plan.index].keys.shape[0] <= model.cfg.num_meta + plan.kv_window
    return float((torch.cat(rows) - full).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description="Self-test: prefill + steps == full forward.")
    parser.add_argument("model_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model_dir)
    n = decode_invariant_length(model.cfg)
    ids = torch.randint(0, model.cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(args.seed))
    err = decode_max_error(model, ids, prefill_len=3)
    print(f"{args.model_dir}: {n} tokens (M={model.cfg.num_meta}, W={model.cfg.sliding_window}), "
          f"prefill 3 + {n - 3} steps vs full forward: max |Δ| = {err:.2e}")
    raise SystemExit(0 if err <= 1e-4 else 1)


if __name__ == "__main__":
    main()
