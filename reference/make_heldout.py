"""Rebuild the demo model's held-out split, the text its reported perplexity (73.7 at context 256)
is measured on, without torch: the corpus steps of `train_demo.py` (read, clean, deduplicate,
shuffle with the fixed seed, keep the first 5 %), taken from that file's own source so there is one
definition of the split.

Usage (from the repo root, after `apt-get install -y fortunes fortunes-min`):

    python3 reference/make_heldout.py > /tmp/heldout.txt      # or --check FILE
    cargo run --release -- perplexity --file /tmp/heldout.txt --context 256

The repository ships the result as `tests/fixtures/demo/heldout-split.txt`; `--check FILE` says whether a
file equals what the installed fortune files give.
"""
import ast
import random
import re
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "train_demo.py"
NEEDED = {"FORTUNE_DIR", "EXCLUDED_FILES", "SEED", "HELDOUT_FRACTION",
          "read_fortunes", "clean", "usable", "split_corpus", "as_text"}


def corpus_functions() -> dict:
    """The constants and functions of train_demo.py's corpus step, and nothing that needs torch."""
    tree = ast.parse(SOURCE.read_text())
    kept = []
    for node in tree.body:
        names = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign)
                 else [node.name] if isinstance(node, ast.FunctionDef) else [])
        if any(n in NEEDED for n in names):
            kept.append(node)
    found = {n for node in kept for n in ([t.id for t in node.targets] if isinstance(node, ast.Assign) else [node.name])}
    if found != NEEDED:
        raise SystemExit(f"train_demo.py no longer defines {sorted(NEEDED - found)}")
    scope = {"Path": Path, "random": random, "re": re}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(SOURCE), "exec"), scope)
    return scope


def main() -> None:
    f = corpus_functions()
    fortunes, _files = f["read_fortunes"]()
    _train, heldout = f["split_corpus"](fortunes)
    text = f["as_text"](heldout)
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        same = Path(sys.argv[2]).read_text() == text
        print(f"{sys.argv[2]}: {'equal to' if same else 'DIFFERENT from'} the held-out split "
              f"({len(heldout)} fortunes, {len(text.encode())} bytes)")
        sys.exit(0 if same else 1)
    sys.stdout.write(text)
    print(f"{len(heldout)} held-out fortunes of {len(fortunes)}", file=sys.stderr)


if __name__ == "__main__":
    main()
