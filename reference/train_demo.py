"""Train the small demo Hymba that `hymba-ref` bundles as its default model.

Usage (from the repo root, after `apt-get install fortunes fortunes-min`):

    .venv/bin/python reference/train_demo.py              # corpus, tokenizer, training, goldens
    .venv/bin/python reference/train_demo.py --eval-only  # keep the checkpoint, redo the evaluation

What it does, in order:

1. **Corpus.** Every fortune of Debian's `fortunes` / `fortunes-min` packages
   (`/usr/share/games/fortunes`, BSD licence, see MODEL_CARD.md), minus the ASCII-art file:
   overstrike backspaces removed, trailing spaces stripped, exact duplicates dropped, fortunes with
   other control characters or with the strings `<s>`, `</s>`, `<unk>` (which the HF tokenizer
   would treat as special tokens) dropped. Shuffled with a fixed seed and split by fortune: 5 %
   held out. A split is one text in the fortune file format: fortunes separated by `\\n%\\n`.
2. **Tokenizer.** SentencePiece BPE with the Llama-2 trainer settings (byte fallback, split
   digits, identity normalisation, dummy prefix, unk/bos/eos = 0/1/2), trained on the training
   split only, exported as `tokenizer.model` and as a Llama-layout `tokenizer.json`, whose merges
   are checked to reproduce `sp.encode` on every training line and on both whole splits (with
   the `tokenizers` package, when installed).
3. **Model.** A small Hymba with every architectural feature (meta tokens, SSM heads, sliding
   window + global layers, cross-layer K/V groups, GQA), trained with AdamW and a cosine schedule
   on random 256-token slices of the tokenised training split (packed: the split is one token
   stream). Training runs a batched forward built from `hymba.py`'s own functions, with the
   selective scan (and its gradient) in a small C kernel instead of `hymba.py`'s Python loop over
   the tokens; both are checked against `hymba.py` before training starts.
4. **Checkpoint** in the released layout (config.json, BF16 model.safetensors with released key
   names, tokenizer files, generation_config.json, MODEL_CARD.md) in `reference/demo-model/`.
5. **Evaluation with `hymba.py` on the saved checkpoint** (the reference is the truth): held-out
   perplexity of the trained and of the untrained (initial) weights, greedy and sampled
   continuations of fixed prompts, and the goldens in `tests/fixtures/demo/` (a ≤ 12 KB held-out
   text, its token ids, its perplexity for two window settings, greedy continuations).

Deterministic: fixed seeds, 2 threads; rerunning with the same torch version on the same kind of
CPU gives the same checkpoint. Timing and hardware are recorded in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import hymba
import perplexity
from make_fixtures import released_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reference" / "demo-model"
FIXTURE = ROOT / "tests" / "fixtures" / "demo"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
EXCLUDED_FILES = {"ascii-art"}  # pictures, not text

SEED = 20241118
THREADS = 1  # on the shared 2-core machine, 2 threads ran 3x slower than 1 (measured)
HELDOUT_FRACTION = 0.05
HELDOUT_FIXTURE_BYTES = 12_000  # keeps tests/demo_model.rs fast
VOCAB = 4000

# The model: every Hymba feature at a size that trains on 2 CPU cores in ~20 minutes and fits in
# a few MB as BF16. 8 layers: global attention in 0, 4, 7 (first, middle, last, as released); the
# others use a 64-token sliding window, and share K/V in pairs (layer 2 attends over layer 1's keys
# and values, layer 6 over layer 5's); layer 3 has its own.
CONFIG = released_config(
    vocab=VOCAB, hidden=128, layers=8, heads=4, kv_heads=2, expand=2, d_state=16, d_conv=4, dt_rank=8,
    ffn=320, mlp="silu", meta=16, window=64, global_idx=[0, 4, 7], groups=[[1, 2], [5, 6]], every=-1,
    kq_norm="none", rope=True, rope_type="ntk", max_pos=2048, orig_max=1024, conv_bias=True,
    proj_bias=False, inner_ln=True, tied=True, dtype="bfloat16")
CONFIG.update({"initializer_range": 0.02, "seq_length": 256, "transformers_version": "4.44.0"})

# Training.
SEQ_LEN = 256
BATCH = 8
STEPS = 700
PEAK_LR = 3e-3
MIN_LR = 1e-4
WARMUP = 30
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
EVAL_EVERY = 100

# Evaluation.
PROMPTS = ["There are two kinds of people", "I think", "Computers are"]
GREEDY_TOKENS = 64  # with M + W = 80, the longer continuations run past the cache's window
SAMPLE_TOKENS = 48
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40
FIXTURE_PPL_SETTINGS = [(512, None), (160, 120)]  # (context, stride): the CLI default, and other windows
REPORT_CONTEXT = 256  # = training length; the model card reports trained/untrained perplexity with it


# ----------------------------------------------------------------------------------------------
# 1. Corpus
# ----------------------------------------------------------------------------------------------

def read_fortunes() -> tuple[list[str], list[str]]:
    """All usable fortunes, deduplicated, in file order; and the files read."""
    if not FORTUNE_DIR.is_dir():
        raise SystemExit(f"{FORTUNE_DIR} not found: apt-get install -y fortunes fortunes-min")
    files = sorted(p.name for p in FORTUNE_DIR.iterdir()
                   if p.is_file() and "." not in p.name and p.name not in EXCLUDED_FILES)
    fortunes, seen = [], set()
    for name in files:
        text = (FORTUNE_DIR / name).read_bytes().decode("utf-8")
        for raw in re.split(r"^%\n", text, flags=re.M):
            fortune = clean(raw)
            if fortune and fortune not in seen and usable(fortune):
                seen.add(fortune)
                fortunes.append(fortune)
    return fortunes, files


def clean(text: str) -> str:
    """Remove overstrike (`x\\b` printed bold/underlined on terminals) and bells; strip trailing
    spaces of every line and blank lines around the fortune."""
    while "\b" in text:
        new = re.sub(".\b", "", text)
        if new == text:
            text = text.replace("\b", "")
        text = new
    text = text.replace("\a", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def usable(fortune: str) -> bool:
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", fortune):  # control or mis-decoded characters
        return False
    return not any(s in fortune for s in ("<s>", "</s>", "<unk>"))


def split_corpus(fortunes: list[str]) -> tuple[list[str], list[str]]:
    shuffled = list(fortunes)
    random.Random(SEED).shuffle(shuffled)
    n_held = round(len(shuffled) * HELDOUT_FRACTION)
    return shuffled[n_held:], shuffled[:n_held]


def as_text(fortunes: list[str]) -> str:
    """The fortune file format: fortunes separated by lines holding only `%`."""
    return "\n%\n".join(fortunes) + "\n"


def heldout_fixture_text(heldout: list[str]) -> str:
    """The first held-out fortunes, as many as fit in HELDOUT_FIXTURE_BYTES."""
    kept = []
    for fortune in heldout:
        if len(as_text(kept + [fortune]).encode()) > HELDOUT_FIXTURE_BYTES:
            break
        kept.append(fortune)
    return as_text(kept)


# ----------------------------------------------------------------------------------------------
# 2. Tokenizer
# ----------------------------------------------------------------------------------------------

def train_tokenizer(train: list[str], workdir: Path) -> spm.SentencePieceProcessor:
    """SentencePiece BPE with the Llama-2 trainer settings, on the training split's lines."""
    lines = workdir / "train_lines.txt"
    lines.write_text("\n".join(line for f in train for line in f.split("\n")) + "\n")
    spm.set_random_generator_seed(SEED)
    with contextlib.chdir(workdir):  # tokenizer.model records these paths: keep them relative
        spm.SentencePieceTrainer.train(
            input=lines.name, model_prefix="tokenizer", model_type="bpe", vocab_size=VOCAB,
            character_coverage=0.99995, byte_fallback=True, split_digits=True, split_by_unicode_script=True,
            split_by_whitespace=True, split_by_number=True, allow_whitespace_only_pieces=True,
            max_sentencepiece_length=16, max_sentence_length=4192, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            vocabulary_output_piece_score=True, hard_vocab_limit=True, shuffle_input_sentence=False,
            num_threads=1, minloglevel=2)
    shutil.copy(workdir / "tokenizer.model", OUT / "tokenizer.model")
    return spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))


def tokenizer_json(sp: spm.SentencePieceProcessor) -> dict:
    """The Llama layout of tokenizer.json. Merges as Hugging Face's converter derives them: every
    split of every piece into two pieces, ordered by the merged piece's rank (its id: a BPE
    model's scores fall with the id), then by the two parts' ids."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, i in vocab.items():
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], f"{left} {right}"))
    merges.sort()
    special = [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())]
    bos = sp.id_to_piece(sp.bos_id())
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [sp.bos_id()], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [m[3] for m in merges]},
    }


def check_tokenizer_json(sp: spm.SentencePieceProcessor, texts: list[str]) -> str:
    """Hugging Face BPE with the exported merges must encode exactly like sentencepiece."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return "not checked (pip install tokenizers to check tokenizer.json against sentencepiece)"
    hf = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    for text in texts:
        want = [sp.bos_id()] + sp.encode(text)
        got = hf.encode(text).ids
        if got != want:
            raise SystemExit(f"tokenizer.json disagrees with sentencepiece on {text[:80]!r}: {got[:20]} vs {want[:20]}")
        if hf.decode(got, skip_special_tokens=True) != sp.decode(want):
            raise SystemExit(f"tokenizer.json decodes {text[:80]!r} differently from sentencepiece")
    return f"tokenizers {__import__('tokenizers').__version__}: identical ids on {len(texts)} texts"


def write_tokenizer_files(sp: spm.SentencePieceProcessor) -> None:
    (OUT / "tokenizer.json").write_text(json.dumps(tokenizer_json(sp), ensure_ascii=False, indent=2) + "\n")
    token = lambda s: {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (OUT / "special_tokens_map.json").write_text(json.dumps({k: token(v) for k, v in names.items()}, indent=2) + "\n")
    config = {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": True,
        "added_tokens_decoder": {str(i): {**token(sp.id_to_piece(i)), "special": True} for i in range(3)},
        **names, "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 2048,
        "pad_token": None, "padding_side": "left", "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": False,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Sampling defaults for `hymba-ref generate` (and HF's generate): greedy decoding of a model
    # this small loops ("a man who is a man who is ..."); light sampling reads better.
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.44.0",
                  "use_cache": True, "do_sample": True, "temperature": 0.8, "top_k": 40, "repetition_penalty": 1.2}
    (OUT / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# 3. Training-speed forward, built from hymba.py's functions
# ----------------------------------------------------------------------------------------------

# The selective scan is the one part of hymba.py too slow to train with (a Python loop over the
# tokens). This C kernel runs the same recurrence, and its hand-written gradient, one sequence at a
# time with the state in cache; ctypes releases the GIL, so THREADS sequences run at once.
SCAN_C = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t;  y_t = C_t . h_t;  h_{-1} = 0.
   Sequences i0 <= i < i1 of the batch. u, delta, y: (b, T, D); A: (D, N); B, C: (b, T, N). */
void scan_forward(int i0, int i1, int T, int D, int N, const float *restrict u, const float *restrict delta,
                  const float *restrict A, const float *restrict B, const float *restrict C, float *restrict y) {
    float *h = malloc(sizeof(float) * D * N);
    for (int i = i0; i < i1; i++) {
        memset(h, 0, sizeof(float) * D * N);
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)i * T + t;
            const float *Bt = B + row * N, *Ct = C + row * N;
            for (int d = 0; d < D; d++) {
                float dt = delta[row * D + d], du = dt * u[row * D + d], acc = 0.0f;
                float *hd = h + (size_t)d * N;
                const float *Ad = A + (size_t)d * N;
                for (int n = 0; n < N; n++) {
                    hd[n] = expf(dt * Ad[n]) * hd[n] + du * Bt[n];
                    acc += Ct[n] * hd[n];
                }
                y[row * D + d] = acc;
            }
        }
    }
    free(h);
}

/* Gradients of y w.r.t. u, delta, A, B, C given dy. Each sequence's states are recomputed into a
   buffer, then the recurrence runs backwards with g = dL/dh_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
   dA is per sequence, (b, D, N). du, ddelta (b, T, D), dA, dB, dC (b, T, N) must be zero on entry. */
void scan_backward(int i0, int i1, int T, int D, int N, const float *restrict u, const float *restrict delta,
                   const float *restrict A, const float *restrict B, const float *restrict C, const float *restrict dy,
                   float *restrict du, float *restrict ddelta, float *restrict dA, float *restrict dB, float *restrict dC) {
    size_t DN = (size_t)D * N;
    float *hs = malloc(sizeof(float) * (T + 1) * DN);  /* hs[t+1] = h_t, hs[0] = 0 */
    float *g = malloc(sizeof(float) * DN);
    for (int i = i0; i < i1; i++) {
        memset(hs, 0, sizeof(float) * DN);
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)i * T + t;
            const float *Bt = B + row * N;
            for (int d = 0; d < D; d++) {
                float dt = delta[row * D + d], du_ = dt * u[row * D + d];
                const float *prev = hs + t * DN + (size_t)d * N, *Ad = A + (size_t)d * N;
                float *cur = hs + (t + 1) * DN + (size_t)d * N;
                for (int n = 0; n < N; n++)
                    cur[n] = expf(dt * Ad[n]) * prev[n] + du_ * Bt[n];
            }
        }
        memset(g, 0, sizeof(float) * DN);
        float *dAi = dA + (size_t)i * DN;
        for (int t = T - 1; t >= 0; t--) {
            size_t row = (size_t)i * T + t;
            const float *Bt = B + row * N, *Ct = C + row * N;
            float *dBt = dB + row * N, *dCt = dC + row * N;
            for (int d = 0; d < D; d++) {
                float dt = delta[row * D + d], ut = u[row * D + d], dyt = dy[row * D + d];
                const float *prev = hs + t * DN + (size_t)d * N, *cur = hs + (t + 1) * DN + (size_t)d * N;
                const float *Ad = A + (size_t)d * N;
                float *gd = g + (size_t)d * N, *dAd = dAi + (size_t)d * N;
                float sum_delta = 0.0f, sum_u = 0.0f;
                for (int n = 0; n < N; n++) {
                    float decay = expf(dt * Ad[n]);
                    float gn = gd[n] + Ct[n] * dyt;                /* dL/dh_t */
                    dCt[n] += dyt * cur[n];
                    sum_delta += gn * (Ad[n] * decay * prev[n] + ut * Bt[n]);
                    sum_u += gn * Bt[n];
                    dBt[n] += gn * dt * ut;
                    dAd[n] += gn * dt * decay * prev[n];
                    gd[n] = gn * decay;                            /* h_t's share of dL/dh_{t-1} */
                }
                ddelta[row * D + d] = sum_delta;
                du[row * D + d] = sum_u * dt;
            }
        }
    }
    free(g);
    free(hs);
}
"""

_scan_lib = None


def scan_lib(workdir: Path) -> ctypes.CDLL:
    """Compile SCAN_C once (needs a C compiler: `cc`, as Rust's linker does)."""
    global _scan_lib
    if _scan_lib is None:
        source, library = workdir / "scan.c", workdir / "scan.so"
        source.write_text(SCAN_C)
        compiler = os.environ.get("CC", "cc")
        subprocess.run([compiler, "-O3", "-march=native", "-ffast-math", "-shared", "-fPIC", "-o", str(library),
                        str(source), "-lm"], check=True)
        _scan_lib = ctypes.CDLL(str(library))
    return _scan_lib


def _in_parallel(function, b: int, *args) -> None:
    """Run a kernel over sequences 0..b, split into THREADS ranges run at once."""
    bounds = [b * k // THREADS for k in range(THREADS + 1)]
    pointers = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
    with ThreadPoolExecutor(THREADS) as pool:
        jobs = [pool.submit(function, ctypes.c_int(bounds[k]), ctypes.c_int(bounds[k + 1]), *pointers)
                for k in range(THREADS) if bounds[k] < bounds[k + 1]]
        for job in jobs:
            job.result()


class SelectiveScan(torch.autograd.Function):
    """y = the C · h part of hymba.selective_scan, from a zero state, for a batch:
    u, delta (b, T, D); A (D, N); B, C (b, T, N) -> y (b, T, D). (hymba.ssm_heads adds D·u.)"""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        u, delta, A, B, C = (t.detach().contiguous() for t in (u, delta, A, B, C))
        (b, T, D), N = u.shape, A.shape[1]
        y = torch.empty_like(u)
        _in_parallel(_scan_lib.scan_forward, b, T, D, N, u, delta, A, B, C, y)
        ctx.save_for_backward(u, delta, A, B, C)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C = ctx.saved_tensors
        (b, T, D), N = u.shape, A.shape[1]
        du, ddelta, dB, dC = (torch.zeros_like(t) for t in (u, delta, B, C))
        dA = torch.zeros(b, D, N)
        _in_parallel(_scan_lib.scan_backward, b, T, D, N, u, delta, A, B, C, dy.contiguous(), du, ddelta, dA, dB, dC)
        return du, ddelta, dA.sum(0), dB, dC


def batched_ssm_heads(cfg: hymba.HymbaConfig, w: dict[str, torch.Tensor], x: torch.Tensor,
                      gate: torch.Tensor) -> torch.Tensor:
    """hymba.ssm_heads for a batch x, gate (b, T, D) from zero states, with the C scan."""
    R, N, eps = cfg.dt_rank, cfg.ssm_state, cfg.rms_norm_eps
    zero_conv_state = torch.zeros(cfg.conv_kernel - 1, cfg.ssm_inner)
    conv = torch.vmap(lambda x1: hymba.causal_conv(x1, zero_conv_state, w["mamba.conv1d.weight"],
                                                   w.get("mamba.conv1d.bias"))[0])(x)
    u = F.silu(conv)  # (b, T, D)
    dt, B, C = torch.split(hymba.linear(u, w["mamba.x_proj.0.weight"]), [R, N, N], dim=-1)
    if cfg.inner_layernorms:
        dt = hymba.rms_norm(dt, w["mamba.dt_layernorm.weight"], eps)
        B = hymba.rms_norm(B, w["mamba.B_layernorm.weight"], eps)
        C = hymba.rms_norm(C, w["mamba.C_layernorm.weight"], eps)
    delta = F.softplus(hymba.linear(dt, w["mamba.dt_proj.0.weight"], w["mamba.dt_proj.0.bias"]))
    A = -torch.exp(w["mamba.A_log.0"])
    y = SelectiveScan.apply(u, delta, A, B, C) + w["mamba.D.0"] * u
    return y * F.silu(gate)


def batched_forward(model: hymba.Hymba, ids: torch.Tensor) -> torch.Tensor:
    """hymba.forward for a batch of equal-length sequences, ids (b, T) -> logits (b, T, V), from
    hymba.py's functions (vmapped over the batch where they take one sequence), except for the SSM
    heads (batched_ssm_heads). Checked against hymba.forward by check_fast_path."""
    cfg, eps = model.cfg, model.cfg.rms_norm_eps
    b = ids.shape[0]
    X = torch.vmap(partial(hymba.prepend_meta_tokens, model))(ids)  # (b, M+T, H)
    rows = X.shape[1]
    positions = torch.arange(rows)
    base = hymba.rope_base(cfg, rows - 1)
    attention = torch.vmap(hymba.attention_heads, in_dims=(0, 0, 0, None, None, None, None))
    kv_bank = {}
    for plan in cfg.layers:
        w = model.layer(plan.index)
        h = hymba.rms_norm(X, w["input_layernorm.weight"], eps)
        z = hymba.linear(h, w["mamba.in_proj.weight"], w.get("mamba.in_proj.bias"))  # (b, rows, P)
        q, k, v, x, gate = hymba.split_in_proj(cfg, plan, z.reshape(b * rows, -1))
        unbatch = lambda t: t.reshape(b, rows, *t.shape[1:])
        q = hymba.kq_normalise(cfg, unbatch(q), w.get("mamba.self_attn.q_norm.weight"))
        if cfg.rope:
            q = hymba.rope(q, positions, base)
        if plan.produces_kv:
            k = hymba.kq_normalise(cfg, unbatch(k), w.get("mamba.self_attn.k_norm.weight"))
            if cfg.rope:
                k = hymba.rope(k, positions, base)
            kv_bank[plan.index] = (k, unbatch(v))
        k, v = kv_bank[plan.kv_source]
        window = None if plan.is_global else cfg.sliding_window
        attn = attention(q, k, v, positions, positions, window, cfg.num_meta)  # (b, rows, D)
        ssm = batched_ssm_heads(cfg, w, unbatch(x), unbatch(gate))  # (b, rows, D)
        X = X + hymba.fuse_heads(cfg, w, attn, ssm)
        X = X + hymba.mlp(cfg, w, hymba.rms_norm(X, w["pre_moe_layernorm.weight"], eps))
    X = hymba.rms_norm(X, model.weights["model.final_layernorm.weight"], eps)
    return hymba.linear(X[:, cfg.num_meta:], model.lm_head)  # (b, T, V)


def check_fast_path(model: hymba.Hymba, generator: torch.Generator) -> dict:
    """The training forward and the scan's gradients must equal hymba.py's (autograd through the
    plain sequential selective_scan)."""
    b, T, width, N = 3, 70, 24, 5
    leaves = [torch.randn(b, T, width, generator=generator),  # u
              3 * torch.rand(b, T, width, generator=generator),  # delta: large steps, strong decay
              -torch.exp(2 * torch.rand(width, N, generator=generator)),  # A
              torch.randn(b, T, N, generator=generator), torch.randn(b, T, N, generator=generator)]  # B, C
    dy = torch.randn(b, T, width, generator=generator)
    leaves = [t.requires_grad_(True) for t in leaves]
    u, delta, A, B, C = leaves
    zero_state = torch.zeros(width, N)
    want = torch.stack([hymba.selective_scan(u[i], delta[i], A, B[i], C[i], torch.zeros(width), zero_state)[0]
                        for i in range(b)])
    want_grads = torch.autograd.grad(want, leaves, dy)
    got = SelectiveScan.apply(*leaves)
    got_grads = torch.autograd.grad(got, leaves, dy)
    rel = lambda g, w: float((g - w).abs().max() / w.abs().max())
    scan_err = max([rel(got, want)] + [rel(g, w) for g, w in zip(got_grads, want_grads)])

    ids = torch.randint(3, model.cfg.vocab_size, (2, 150), generator=generator)  # past M + W
    with torch.no_grad():
        got = batched_forward(model, ids)
    want = torch.stack([hymba.forward(model, row).logits for row in ids])
    forward_err = rel(got, want)
    print(f"fast path check: C scan vs hymba.selective_scan (values and gradients) max |Δ|/max {scan_err:.1e}; "
          f"batched forward vs hymba.forward max |Δ|/max {forward_err:.1e}")
    if scan_err > 1e-5 or forward_err > 1e-5:
        raise SystemExit("the training forward does not match hymba.py")
    return {"scan_max_rel": scan_err, "forward_max_rel": forward_err}


# ----------------------------------------------------------------------------------------------
# 4. Weights and training
# ----------------------------------------------------------------------------------------------

def init_weights(cfg: hymba.HymbaConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """GPT-2/Mamba-style initialisation of every tensor of the released layout."""
    std, out_std = CONFIG["initializer_range"], CONFIG["initializer_range"] / math.sqrt(2 * cfg.num_layers)
    uniform = lambda shape, bound: (2 * torch.rand(shape, generator=generator) - 1) * bound
    weights = {}
    for name, shape in hymba.weight_shapes(cfg).items():
        if name.endswith("norm.weight") or name.endswith("D.0"):
            w = torch.ones(shape)
        elif name.endswith("A_log.0"):  # S4D-real: A = -(1..N) in every channel
            w = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape).clone()
        elif name.endswith("dt_proj.0.bias"):  # softplus(bias) = Δ, log-uniform in [0.001, 0.1]
            dt = torch.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * torch.rand(shape, generator=generator))
            w = dt + torch.log(-torch.expm1(-dt))
        elif name.endswith("dt_proj.0.weight"):
            w = uniform(shape, cfg.dt_rank ** -0.5)
        elif "conv1d" in name:
            w = uniform(shape, cfg.conv_kernel ** -0.5)
        elif name.endswith("out_proj.weight") or name.endswith("down_proj.weight"):
            w = torch.randn(shape, generator=generator) * out_std
        else:  # embedding, meta tokens, in_proj, x_proj, gate/up
            w = torch.randn(shape, generator=generator) * std
        weights[name] = w.contiguous()
    return weights


def bf16_rounded(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: w.detach().to(torch.bfloat16).to(torch.float32) for name, w in weights.items()}


def save_checkpoint(weights: dict[str, torch.Tensor], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")
    stored = {name: w.detach().to(torch.bfloat16).contiguous() for name, w in weights.items()}
    save_file(stored, directory / "model.safetensors", metadata={"format": "pt"})


def learning_rate(step: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + (PEAK_LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress))


def train(model: hymba.Hymba, train_ids: torch.Tensor, heldout_ids: torch.Tensor,
          generator: torch.Generator) -> list[dict]:
    params = model.weights
    for p in params.values():
        p.requires_grad_(True)
    decay = [p for n, p in params.items() if p.ndim >= 2 and "A_log" not in n]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "A_log" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=PEAK_LR, betas=(0.9, 0.95))
    # A fixed held-out batch for progress reports (the real evaluation is done by hymba.py afterwards).
    n_eval = min(16, (len(heldout_ids) - 1) // SEQ_LEN)
    eval_x = heldout_ids[: n_eval * SEQ_LEN].reshape(n_eval, SEQ_LEN)
    eval_y = heldout_ids[1: n_eval * SEQ_LEN + 1].reshape(n_eval, SEQ_LEN)
    log, start, window_loss = [], time.time(), []
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        offsets = torch.randint(0, len(train_ids) - SEQ_LEN - 1, (BATCH,), generator=generator)
        x = torch.stack([train_ids[o: o + SEQ_LEN] for o in offsets])
        y = torch.stack([train_ids[o + 1: o + SEQ_LEN + 1] for o in offsets])
        logits = batched_forward(model, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), GRAD_CLIP)
        optimizer.step()
        window_loss.append(float(loss))
        if (step + 1) % EVAL_EVERY == 0 or step == 0 or step + 1 == STEPS:
            with torch.no_grad():
                eval_logits = batched_forward(model, eval_x)
                eval_loss = float(F.cross_entropy(eval_logits.reshape(-1, eval_logits.shape[-1]), eval_y.reshape(-1)))
            entry = {"step": step + 1, "minutes": round((time.time() - start) / 60, 2),
                     "train_loss": round(sum(window_loss) / len(window_loss), 4), "heldout_loss": round(eval_loss, 4),
                     "lr": round(learning_rate(step), 6)}
            log.append(entry)
            window_loss = []
            print(json.dumps(entry), flush=True)
    for p in params.values():
        p.requires_grad_(False)
    return log


# ----------------------------------------------------------------------------------------------
# 5. Evaluation with hymba.py
# ----------------------------------------------------------------------------------------------

def sample(model: hymba.Hymba, prompt: list[int], steps: int, generator: torch.Generator) -> list[int]:
    """Temperature + top-k sampling with hymba.py's cache (prefill, then one step per token)."""
    cache = hymba.new_cache(model)
    logits = hymba.prefill(model, prompt, cache)[-1]
    tokens = []
    for s in range(steps):
        top = torch.topk(logits / SAMPLE_TEMPERATURE, SAMPLE_TOP_K)
        choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
        tokens.append(int(top.indices[choice]))
        if tokens[-1] == 2:  # </s>
            break
        if s + 1 < steps:
            logits = hymba.step(model, tokens[-1], cache)
    return tokens


def evaluate(sp: spm.SentencePieceProcessor, heldout_text: str, fixture_text: str, untrained_dir: Path) -> dict:
    model = hymba.load_model(OUT)  # the checkpoint as stored: BF16 weights, read back
    untrained = hymba.load_model(untrained_dir)
    heldout_ids = [sp.bos_id()] + sp.encode(heldout_text)
    fixture_ids = [sp.bos_id()] + sp.encode(fixture_text)
    results = {"heldout_split": {}, "fixture": {}}
    for name, m in (("trained", model), ("untrained", untrained)):
        t0 = time.time()
        count, nll, ppl = perplexity.perplexity(m, heldout_ids, REPORT_CONTEXT)
        results["heldout_split"][name] = {"tokens": count, "mean_nll": nll, "perplexity": ppl}
        print(f"held-out split, {name}: {count} tokens, NLL {nll:.4f}, perplexity {ppl:.2f} "
              f"(context {REPORT_CONTEXT}, {time.time() - t0:.0f} s)", flush=True)
    fixture_ppl = []
    for context, stride in FIXTURE_PPL_SETTINGS:
        count, nll, ppl = perplexity.perplexity(model, fixture_ids, context, stride)
        fixture_ppl.append({"context": context, "stride": stride if stride is not None else context // 2,
                            "tokens": count, "mean_nll": nll, "perplexity": ppl})
        print(f"heldout.txt, context {context}: {count} tokens, NLL {nll:.6f}, perplexity {ppl:.4f}")
    _, _, untrained_fixture_ppl = perplexity.perplexity(untrained, fixture_ids, REPORT_CONTEXT)
    results["fixture"] = {"trained": fixture_ppl, "untrained_perplexity_context_256": untrained_fixture_ppl}

    greedy, samples = [], []
    generator = torch.Generator().manual_seed(SEED)
    for prompt in PROMPTS:
        prompt_ids = [sp.bos_id()] + sp.encode(prompt)
        # The text a continuation adds after the prompt (decoding it alone would drop its first space).
        continuation = lambda tokens: sp.decode(prompt_ids + tokens)[len(sp.decode(prompt_ids)):]
        tokens, chosen_from = hymba.generate_greedy(model, prompt_ids, GREEDY_TOKENS)
        top2 = torch.topk(chosen_from, 2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())  # a near-tie could flip under float noise
        greedy.append({"prompt": prompt, "prompt_ids": prompt_ids, "tokens": tokens, "min_top2_margin": margin,
                       "text": continuation(tokens)})
        sampled = sample(model, prompt_ids, SAMPLE_TOKENS, generator)
        untrained_tokens, _ = hymba.generate_greedy(untrained, prompt_ids, 16)
        samples.append({"prompt": prompt, "sampled": continuation(sampled),
                        "untrained_greedy": continuation(untrained_tokens)})
        print(f"\n--- {prompt!r} (min top-2 margin {margin:.3f})\ngreedy:  {prompt + continuation(tokens)!r}\n"
              f"sampled: {prompt + continuation(sampled)!r}\nuntrained: {prompt + continuation(untrained_tokens)!r}")
        if margin < 1e-3:
            print(f"WARNING: greedy continuation of {prompt!r} has a near-tie (margin {margin:.1e})")
    results["greedy"], results["samples"] = greedy, samples
    results["fixture_ids"] = fixture_ids
    return results


def write_goldens(results: dict, fixture_text: str) -> None:
    FIXTURE.mkdir(parents=True, exist_ok=True)
    (FIXTURE / "heldout.txt").write_text(fixture_text)
    expected = {
        "about": "Goldens for tests/demo_model.rs, written by reference/train_demo.py with reference/hymba.py "
                 "on reference/demo-model. heldout.txt: the first held-out fortunes; ids: BOS + sentencepiece "
                 "encoding of the whole file; perplexity windows as in reference/perplexity.py.",
        "model": "reference/demo-model",
        "heldout_ids": results["fixture_ids"],
        "perplexity": results["fixture"]["trained"],
        "greedy": [{k: g[k] for k in ("prompt", "prompt_ids", "tokens", "min_top2_margin", "text")}
                   for g in results["greedy"]],
    }
    text = json.dumps(expected, indent=1, ensure_ascii=False)
    text = re.sub(r"\[[0-9,\s]+\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # id lists on one line
    (FIXTURE / "expected.json").write_text(text + "\n")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_model_card(info: dict) -> None:
    cfg = hymba.HymbaConfig.from_dict(CONFIG)
    r = info["results"]
    trained, untrained = r["heldout_split"]["trained"], r["heldout_split"]["untrained"]
    block = lambda title, text: f"{title}:\n\n```text\n{text.rstrip()}\n```\n"
    samples = "\n".join(
        block(f"**{g['prompt']}** (greedy)", g["prompt"] + g["text"])
        + "\n" + block(f"**{g['prompt']}** (sampled)", g["prompt"] + s["sampled"])
        for g, s in zip(r["greedy"], r["samples"]))
    untrained_samples = "\n".join(f"- {json.dumps(s['prompt'] + s['untrained_greedy'], ensure_ascii=False)}"
                                   for s in r["samples"])
    log = "\n".join(f"| {e['step']} | {e['minutes']} | {e['train_loss']} | {e['heldout_loss']} |" for e in info["log"])
    (OUT / "MODEL_CARD.md").write_text(f"""\
# hymba-ref demo model

A tiny Hymba (arXiv 2411.13676) trained from scratch on fortune cookies, bundled with `hymba-ref`
as its default model so that a fresh clone can show the engine generating English. It is a demo,
not a useful language model: it knows the style of Unix fortunes and little else.

Made by `reference/train_demo.py` (deterministic; fixed seed {SEED}) with the PyTorch reference
`reference/hymba.py`. Released checkpoint layout: `config.json`, `model.safetensors` (BF16, released
key names, tied embeddings), `tokenizer.json` + `tokenizer.model` (Llama-2-style SentencePiece BPE),
`tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json`.

## Model

| | |
|---|---|
| parameters | {info['params']:,} ({info['params_non_embedding']:,} without the embedding) |
| vocabulary V | {cfg.vocab_size} (SentencePiece BPE, byte fallback; `<unk>` 0, `<s>` 1, `</s>` 2) |
| width H / layers L | {cfg.hidden_size} / {cfg.num_layers} |
| attention heads nh / K/V heads nkv | {cfg.num_heads} / {cfg.num_kv_heads} (dqk {cfg.qk_head_dim}, dv {cfg.v_head_dim}) |
| SSM | D = {cfg.ssm_inner} (expand 2), state N = {cfg.ssm_state}, conv K = {cfg.conv_kernel}, Δ rank R = {cfg.dt_rank}, inner layernorms |
| MLP | SwiGLU, F = {cfg.intermediate_size} |
| meta tokens M | {cfg.num_meta} |
| attention | global layers {CONFIG['global_attn_idx']}, the others a sliding window W = {cfg.sliding_window} |
| K/V sharing | `kv_reuse_group` {CONFIG['kv_reuse_group']} (layer 2 reuses layer 1's K/V, 6 reuses 5's) |
| RoPE | NTK (base {hymba.rope_base(cfg, 0):.0f}) |

## Data

All fortunes of Debian's `fortunes` and `fortunes-min` packages, version {info['fortunes_version']}
(`/usr/share/games/fortunes`, every file but `ascii-art`: {', '.join(info['files'])}).
Licence: BSD (Regents of the University of California, clause 3 deleted), as stated in
`/usr/share/doc/fortunes/copyright`. Cleaning: overstrike backspaces and bells removed, trailing
spaces stripped, exact duplicates dropped, and fortunes with other control characters or with the
strings `<s>` / `</s>` / `<unk>` dropped: {info['n_fortunes']:,} fortunes. Split by fortune with a
fixed seed: {info['n_train']:,} for training ({info['train_bytes']:,} bytes, {info['train_tokens']:,}
tokens), {info['n_heldout']:,} held out ({info['heldout_bytes']:,} bytes, {info['heldout_tokens']:,}
tokens). Each split is one text in the fortune file format (fortunes separated by `%` lines).
The tokenizer was trained on the training split only; `tokenizer.json` is checked to encode exactly
like `tokenizer.model` ({info['tokenizer_check']}).

## Training

AdamW (β 0.9/0.95, weight decay {WEIGHT_DECAY} on matrices), peak learning rate {PEAK_LR}, {WARMUP} warm-up
steps then cosine to {MIN_LR}, gradient clipping {GRAD_CLIP}; {STEPS} steps of {BATCH} random
{SEQ_LEN}-token slices of the training stream ({STEPS * BATCH * SEQ_LEN / 1e6:.1f}M tokens,
{STEPS * BATCH * SEQ_LEN / info['train_tokens']:.1f} passes over the data). Float32, PyTorch
{torch.__version__}, {THREADS} thread{'s' if THREADS > 1 else ''} on {info['cpu']} (a machine shared with other jobs): **{info['train_minutes']:.1f} minutes** of training
({info['total_minutes']:.1f} minutes for the whole script, evaluation included).

| step | minutes | train loss | held-out loss (16 × {SEQ_LEN} tokens) |
|---|---|---|---|
{log}

## Evaluation (reference/hymba.py on this checkpoint, BF16 weights)

Held-out split, BOS + whole text, windows of {REPORT_CONTEXT} tokens with stride {REPORT_CONTEXT // 2}
(`reference/perplexity.py --context {REPORT_CONTEXT}`; `hymba-ref perplexity` computes the same):

| model | tokens | mean NLL (nats/token) | perplexity |
|---|---|---|---|
| trained | {trained['tokens']:,} | {trained['mean_nll']:.4f} | **{trained['perplexity']:.2f}** |
| untrained (the initial weights) | {untrained['tokens']:,} | {untrained['mean_nll']:.4f} | {untrained['perplexity']:.2f} |

Continuations by `hymba.py` (greedy: the most likely token at each step, {GREEDY_TOKENS} tokens;
sampled: temperature {SAMPLE_TEMPERATURE}, top-k {SAMPLE_TOP_K}, fixed seed, at most {SAMPLE_TOKENS} tokens). The
corpus's fortune format shows through: `%` lines separate fortunes, attributions are indented with
tabs. A model this small repeats itself when decoded greedily.

{samples}
The untrained model (greedy, 16 tokens) for comparison:

{untrained_samples}
""")


# ----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description="Train the demo Hymba (see the module docstring).")
    parser.add_argument("--eval-only", action="store_true", help="keep reference/demo-model, redo evaluation and goldens")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    script_start = time.time()

    fortunes, files = read_fortunes()
    train_f, heldout_f = split_corpus(fortunes)
    train_text, heldout_text = as_text(train_f), as_text(heldout_f)
    fixture_text = heldout_fixture_text(heldout_f)
    workdir = ROOT / "target" / "train_demo"
    workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)

    if args.eval_only:
        sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
        info = json.loads((workdir / "train_info.json").read_text())
    else:
        sp = train_tokenizer(train_f, workdir)
        write_tokenizer_files(sp)
        check = check_tokenizer_json(sp, [line for f in train_f for line in f.split("\n")]
                                     + [train_text, heldout_text, fixture_text, *PROMPTS])
        print(f"tokenizer: {sp.get_piece_size()} pieces; tokenizer.json {check}")
        train_ids = torch.tensor([sp.bos_id()] + sp.encode(train_text))
        heldout_ids = torch.tensor([sp.bos_id()] + sp.encode(heldout_text))

        cfg = hymba.HymbaConfig.from_dict(CONFIG)
        generator = torch.Generator().manual_seed(SEED)
        weights = init_weights(cfg, generator)
        save_checkpoint(weights, workdir / "untrained")
        shutil.copy(OUT / "tokenizer.model", workdir / "untrained" / "tokenizer.model")
        model = hymba.Hymba(cfg, weights)
        params = sum(w.numel() for w in weights.values())
        print(f"model: {params:,} parameters; corpus: {len(train_f)} training fortunes ({len(train_ids):,} tokens), "
              f"{len(heldout_f)} held out ({len(heldout_ids):,} tokens)")
        scan_lib(workdir)
        fast_path = check_fast_path(model, torch.Generator().manual_seed(SEED + 1))

        train_start = time.time()
        log = train(model, train_ids, heldout_ids, generator)
        train_minutes = (time.time() - train_start) / 60
        save_checkpoint(weights, OUT)
        info = {
            "params": params, "params_non_embedding": params - weights["model.embed_tokens.weight"].numel(),
            "files": files, "n_fortunes": len(fortunes), "n_train": len(train_f), "n_heldout": len(heldout_f),
            "train_bytes": len(train_text.encode()), "heldout_bytes": len(heldout_text.encode()),
            "train_tokens": len(train_ids), "heldout_tokens": len(heldout_ids), "tokenizer_check": check,
            "fast_path_check": fast_path, "log": log, "train_minutes": train_minutes, "cpu": cpu_name(),
            "fortunes_version": fortunes_version(),
        }
        (workdir / "train_info.json").write_text(json.dumps(info, indent=1) + "\n")

    results = evaluate(sp, heldout_text, fixture_text, workdir / "untrained")
    write_goldens(results, fixture_text)
    info["results"] = results
    info["total_minutes"] = info.get("total_minutes") or (time.time() - script_start) / 60
    (workdir / "train_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "results"}, indent=1) + "\n")
    write_model_card(info)
    print(f"done in {(time.time() - script_start) / 60:.1f} minutes; wrote {OUT} and {FIXTURE}")


def fortunes_version() -> str:
    try:
        import subprocess
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "fortunes"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
