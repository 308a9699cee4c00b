#!/usr/bin/env python3
"""Trim the released Hymba tokenizer files (tests/fixtures/hymba-tokenizer) to small but valid
seeds for the tokenizer fuzz targets: the special and byte-fallback pieces plus the pieces made by
the first merges (about 600 pieces), renumbered densely, in both formats.

    python3 fuzz/make_tokenizer_seeds.py      # from the repository root; deterministic
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests/fixtures/hymba-tokenizer")
OUT = os.path.join(ROOT, "fuzz/corpus")
MAX_PIECES = 600


def kept_pieces(vocab, merges):
    """Special and byte pieces, ASCII and a few other characters, then merge results whose parts
    are kept, in merge order."""
    extra = set("▁éüöï—漢字")
    keep = {p for p, i in vocab.items() if i < 259 or (len(p) == 1 and (p.isascii() or p in extra))}
    kept_merges = []
    for m in merges:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in keep and b in keep and a + b in vocab:
            kept_merges.append(m)
            keep.add(a + b)
            if len(keep) >= MAX_PIECES:
                break
    return keep, kept_merges


def trim_json(keep, kept_merges):
    d = json.load(open(os.path.join(SRC, "tokenizer.json"), encoding="utf-8"))
    vocab = d["model"]["vocab"]
    order = sorted(keep, key=lambda p: vocab[p])
    new_vocab = {p: i for i, p in enumerate(order)}
    d["model"]["vocab"] = new_vocab
    d["model"]["merges"] = kept_merges
    # Added tokens: the specials keep their ids; the ones past the vocabulary follow it.
    n = len(new_vocab)
    for t in d["added_tokens"]:
        t["id"] = new_vocab.get(t["content"], n)
        if t["content"] not in new_vocab:
            n += 1
    return json.dumps(d, ensure_ascii=False, indent=None).encode("utf-8")


def read_varint(b, i):
    shift = result = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def fields(b):
    """(field number, wire type, raw bytes of the whole field) for each top-level field."""
    i = 0
    while i < len(b):
        start = i
        key, i = read_varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = read_varint(b, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, wire, b[start:i]


def piece_string(raw):
    # raw is the whole field: key, length, then the SentencePiece message.
    _, i = read_varint(raw, 0)
    _, i = read_varint(raw, i)
    for num, wire, sub in fields(raw[i:]):
        if num == 1 and wire == 2:
            _, j = read_varint(sub, 0)
            length, j = read_varint(sub, j)
            return sub[j:j + length].decode("utf-8")
    return None


def trim_model(keep):
    b = open(os.path.join(SRC, "tokenizer.model"), "rb").read()
    out = bytearray()
    for num, wire, raw in fields(b):
        if num == 1 and wire == 2 and piece_string(raw) not in keep:
            continue
        out += raw
    return bytes(out)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    d = json.load(open(os.path.join(SRC, "tokenizer.json"), encoding="utf-8"))
    keep, kept_merges = kept_pieces(d["model"]["vocab"], d["model"]["merges"])
    small_json = trim_json(keep, kept_merges)
    small_model = trim_model(keep)
    write("tokenizer_json", "hymba-trimmed.json", small_json)
    write("tokenizer_model", "hymba-trimmed.model", small_model)
    # The round-trip target: a selector byte (bit 0: json or model), then the text to encode.
    texts = [
        "Hello world",
        "  leading spaces, tabs\tand\nnewlines  ",
        "Ünïcödé — emoji 🦙 and 漢字",
        "<s> special </s> tokens <unk>",
        "",
    ]
    for i, text in enumerate(texts):
        write("tokenizer_roundtrip", f"text{i}", bytes([i & 1]) + text.encode("utf-8"))
    # Bit 1 of the selector: the rest is little-endian u32 ids (folded to just past the vocabulary).
    ids = [1, 15043, 3186, 3, 258, 243, 162, 169, 156, 31999, 32000, 2]
    for which in (0, 1):
        write("tokenizer_roundtrip", f"ids{which}", bytes([2 | which]) + b"".join(struct.pack("<I", i) for i in ids))
    print(len(keep), "pieces;", len(small_json), "bytes json;", len(small_model), "bytes model")


if __name__ == "__main__":
    main()
