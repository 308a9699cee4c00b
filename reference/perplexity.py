"""Token-level negative log-likelihood and perplexity of a text file under a Hymba model.

The same metric, with the same windows, as `hymba-ref perplexity`:

- the text is read as UTF-8 and encoded with BOS first (`tokenizer.model` of the model directory,
  i.e. the sentencepiece library; the engine reads `tokenizer.json`, which encodes plain text
  identically, see `train_demo.py`);
- every token after the BOS is scored exactly once: NLL = -log softmax(logits of the previous
  position)[token], in nats;
- a text longer than the context is scored in windows of `context` tokens whose starts are
  `stride` apart (default: context / 2). Each window is a fresh sequence (meta tokens first), and
  scores only the tokens the previous window did not reach, so every token after the first window
  is predicted from at least `context - stride` tokens of left context;
- reported: the number of scored tokens, mean NLL (nats/token) and perplexity = exp(mean NLL).

Usage (from the repo root):

    .venv/bin/python reference/perplexity.py --model reference/demo-model --file tests/fixtures/demo/heldout.txt
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import hymba

DEFAULT_CONTEXT = 512


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window
    end: int  # one past its last token
    first_scored: int  # the window scores the tokens first_scored .. end-1 (first_scored > begin)


def windows(n: int, context: int, stride: int | None = None) -> list[Window]:
    """The windows that score tokens 1..n-1 of an n-token sequence, each once."""
    stride = context // 2 if stride is None else stride
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    if not 1 <= stride < context:
        raise ValueError(f"stride must be between 1 and context - 1 = {context - 1}, got {stride}")
    result, begin, scored_until = [], 0, 1  # token 0 (BOS) is never scored
    while scored_until < n:
        end = min(begin + context, n)
        result.append(Window(begin, end, scored_until))
        scored_until = end
        begin += stride
    return result


def token_nlls(model: hymba.Hymba, ids: list[int], context: int, stride: int | None = None,
               progress: bool = False) -> torch.Tensor:
    """-log p(ids[t] | ids[window begin .. t-1]) for t = 1..n-1, in nats (float64, (n-1,))."""
    parts = []
    plan = windows(len(ids), context, stride)
    for k, w in enumerate(plan):
        logits = hymba.forward(model, ids[w.begin:w.end]).logits  # (end - begin, V)
        rows = logits[w.first_scored - 1 - w.begin: w.end - 1 - w.begin]  # predict first_scored .. end-1
        targets = torch.tensor(ids[w.first_scored:w.end])
        logp = torch.log_softmax(rows, dim=-1)  # float32, like the engine
        parts.append(-logp.gather(1, targets[:, None])[:, 0].to(torch.float64))
        if progress:
            print(f"\rwindow {k + 1}/{len(plan)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return torch.cat(parts)


def perplexity(model: hymba.Hymba, ids: list[int], context: int = DEFAULT_CONTEXT, stride: int | None = None,
               progress: bool = False) -> tuple[int, float, float]:
    """(tokens scored, mean NLL in nats/token, perplexity)."""
    if len(ids) < 2:
        raise ValueError("need at least one token after the BOS to score")
    nll = token_nlls(model, ids, context, stride, progress)
    mean = float(nll.sum()) / nll.numel()
    return nll.numel(), mean, math.exp(mean)


def encode_with_bos(model_dir: Path, text: str) -> list[int]:
    """BOS + the sentencepiece encoding of the whole text (one dummy-prefix `▁`, at the start)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    return [sp.bos_id()] + sp.encode(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--stride", type=int, default=None, help="default: context / 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = hymba.load_model(args.model)
    ids = encode_with_bos(args.model, args.file.read_bytes().decode("utf-8"))
    count, mean, ppl = perplexity(model, ids, args.context, args.stride, progress=True)
    print(f"tokens scored: {count}\nmean NLL: {mean:.6f} nats/token\nperplexity: {ppl:.4f}")


if __name__ == "__main__":
    main()
