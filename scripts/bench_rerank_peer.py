#!/usr/bin/env python3
"""The Python peer of `bench rerank` (examples/bench.rs): a cross-encoder the usual Python way.

onnxruntime (InferenceSession, CPUExecutionProvider, ORT_ENABLE_ALL) + tokenizers (pairs encoded as
one sequence, truncated longest-first to the model's max length: sentence_bert_config.json's
max_seq_length, else min(max_position_embeddings, tokenizer_config.json's model_max_length), as
sentence-transformers' CrossEncoder does) + numpy sigmoid. Pairs sorted by token length (untimed),
batches of --batch, padding to the longest pair of each batch. One warm-up pass, then --repeat
timed passes; the best is reported as one JSON line:
{"impl","pairs","tokens","seconds","pairs_per_s"}.

With --check REFERENCE.jsonl ({"query","text","logit"} rows) it first checks its own logits
against the reference (max difference, exits 1 above 1e-3), so the peer is known to be right.

Needs onnxruntime, tokenizers and numpy (`cargo run --release --example bench -- setup` makes
target/bench-venv with them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(model: str) -> str:
    home = os.environ.get("HF_HOME") or os.path.join(ROOT, "..", "shared", "hf")
    folder = os.path.join(home, "hub", "models--" + model.replace("/", "--"))
    with open(os.path.join(folder, "refs", "main"), encoding="utf-8") as f:
        return os.path.join(folder, "snapshots", f.read().strip())


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def max_length(snap: str) -> int:
    st = read_json(os.path.join(snap, "sentence_bert_config.json")).get("max_seq_length")
    positions = read_json(os.path.join(snap, "config.json")).get("max_position_embeddings")
    if st is None:
        tok = read_json(os.path.join(snap, "tokenizer_config.json")).get("model_max_length")
        st = min(x for x in (positions, tok, 512) if x)
    return min(st, positions) if positions else st


class CrossEncoder:
    def __init__(self, snap: str, threads: int | None) -> None:
        self.tokenizer = Tokenizer.from_file(os.path.join(snap, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length(snap), strategy="longest_first")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.path.join(snap, "onnx", "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(pairs)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = types
        return self.session.run(None, feed)[0][:, 0]

    def scores(self, pairs: list[tuple[str, str]], batch: int) -> np.ndarray:
        out = [1.0 / (1.0 + np.exp(-self.logits(pairs[i : i + batch]))) for i in range(0, len(pairs), batch)]
        return np.concatenate(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="akidb-test/tiny-cross-encoder")
    p.add_argument("--pairs", required=True, help="JSON file: [[query, passage], ...]")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--check", help="reference JSONL with query, text, logit")
    a = p.parse_args()

    model = CrossEncoder(snapshot(a.model), a.threads)
    if a.check:
        with open(a.check, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        got = np.concatenate([model.logits([(r["query"], r["text"])]) for r in rows])
        worst = float(np.max(np.abs(got - np.array([r["logit"] for r in rows]))))
        if worst > 1e-3:
            print(f"peer logits differ from the reference by {worst}", file=sys.stderr)
            return 1

    with open(a.pairs, encoding="utf-8") as f:
        pairs = [tuple(x) for x in json.load(f)]
    lengths = [len(e.ids) for e in model.tokenizer.encode_batch(pairs)]
    pairs = [pairs[i] for i in sorted(range(len(pairs)), key=lambda i: lengths[i])]
    model.scores(pairs, a.batch)
    best = float("inf")
    for _ in range(max(1, a.repeat)):
        t = time.perf_counter()
        model.scores(pairs, a.batch)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"impl": "python", "pairs": len(pairs), "tokens": sum(lengths), "seconds": best,
                      "pairs_per_s": len(pairs) / best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
