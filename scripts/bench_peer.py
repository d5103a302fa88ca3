#!/usr/bin/env python3
"""The Python peer of akidb's benchmarks: the same embedding pipeline, done the usual Python way.

onnxruntime (InferenceSession, CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads =
os.cpu_count() unless --threads) + tokenizers (Tokenizer.from_file, truncation at the model's
max_seq_length from sentence_bert_config.json, padding to the longest text of each batch,
encode_batch) + numpy pooling (mean over the attention mask, or CLS, as 1_Pooling/config.json says)
and L2 normalization. Needs onnxruntime, tokenizers and numpy (plus onnx, sympy and packaging for
--optimize); `cargo run --release --example bench -- setup` makes target/bench-venv with them.

Modes (each prints one JSON line on stdout):

  --mode throughput --corpus FILE [--batch 32] [--repeat 3]
      Texts sorted by token length (once, untimed), cut into batches; one warm-up pass, then
      --repeat timed passes of tokenize + run + pool + normalize over every batch; the best pass
      is reported: {"impl","mode","texts","tokens","seconds","texts_per_s","tokens_per_s"}.
      "tokens" counts real (not padding) tokens after truncation.
  --mode latency --text T [--iterations 300] [--warmup 30]
      One text end to end (tokenize + run + pool + normalize) per call; nearest-rank percentiles:
      {"impl","mode","p50_ms","p95_ms","p99_ms","mean_ms","iterations"}.
  --check REFERENCE.jsonl   (or --mode check --reference FILE)
      Embeds every {"text","embedding"} line and reports the minimum cosine to the reference;
      exits 1 if it is below --min-cosine (default 0.9999).
  --mode floor [--repeat 3]
      sgemm at the model's shapes on all cores, the faster of numpy and ONNX Runtime's MatMul:
      {"impl","mode","gflops","gflops_numpy","gflops_onnxruntime"} (the compute floor of
      docs/performance.md).
  --mode bf16-floor [--repeat 3]
      The bf16 floor: oneDNN's matmul (the onednn-cpu-gomp wheel, through ctypes) with bf16
      inputs, weights in oneDNN's own packed layout and fp32 output, at the same shapes on all
      cores: {"impl","mode","gflops","gflops_by_shape","kernel"} ("kernel" is oneDNN's
      implementation, e.g. brg:avx512_core_bf16; a CPU without bf16 instructions is an error).
  --optimize
      Any mode that runs the model: use the graph after onnxruntime.transformers.optimizer
      (SkipLayerNormalization, BiasGelu fused), saved once under target/bench-peer/.
  --mode stats --corpus FILE
      The corpus' token-length distribution (before and after truncation); runs no model.

Model: --model-dir DIR, else the snapshot that $HF_HOME/hub/models--<org>--<name>/refs/main names
(HF_HOME defaults to ../shared/hf beside the repo, then ~/.cache/huggingface); --model picks the
repo (default sentence-transformers/all-MiniLM-L6-v2), --onnx-file the graph inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def die(message: str) -> None:
    print(f"bench_peer: error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve_model_dir(model: str) -> str:
    candidates = []
    if os.environ.get("HF_HOME"):
        candidates.append(os.environ["HF_HOME"])
    else:
        candidates.append(os.path.join(ROOT, "..", "shared", "hf"))
        candidates.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    repo_dir = "models--" + model.replace("/", "--")
    for home in candidates:
        ref = os.path.join(home, "hub", repo_dir, "refs", "main")
        if os.path.isfile(ref):
            with open(ref, encoding="utf-8") as f:
                commit = f.read().strip()
            snapshot = os.path.join(home, "hub", repo_dir, "snapshots", commit)
            if os.path.isdir(snapshot):
                return os.path.abspath(snapshot)
            die(f"{ref} names snapshot {commit}, but {snapshot} is missing")
    die(
        f"no Hugging Face cache of {model} (looked for hub/{repo_dir}/refs/main under "
        f"{', '.join(candidates)}); set HF_HOME or pass --model-dir"
    )
    raise AssertionError  # unreachable


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        die(f"{what} not found: {path}")
    except json.JSONDecodeError as e:
        die(f"{what} is not valid JSON ({path}): {e}")
    raise AssertionError  # unreachable


def optimized_graph(model_dir: str, onnx_path: str) -> str:
    """ONNX Runtime's transformers optimizer over the graph (SkipLayerNormalization, BiasGelu and
    whatever else it recognises), saved once under target/bench-peer/ and reused."""
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as e:
        die(f"the transformers optimizer needs {e.name}; run `cargo run --release --example bench -- setup`")
    config = read_json(os.path.join(model_dir, "config.json"), "config.json")
    out_dir = os.path.join(ROOT, "target", "bench-peer")
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(os.path.normpath(model_dir)) + "-" + onnx_path.replace(os.sep, "_").strip("_")
    out = os.path.join(out_dir, name[-120:] + ".optimized.onnx")
    if not os.path.isfile(out) or os.path.getmtime(out) < os.path.getmtime(onnx_path):
        model = optimizer.optimize_model(
            onnx_path, model_type="bert", num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]), opt_level=0,
        )
        fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
        print(f"bench_peer: optimizer fused {fused}", file=sys.stderr)
        model.save_model_to_file(out)
    return out


def floor(repeat: int) -> None:
    """sgemm at the model's shapes (tokens x hidden x ffn) on all cores, the faster of numpy's BLAS
    and ONNX Runtime's own MatMul (MLAS, weights prepacked as in the model): on CPUs where the BLAS
    picks a narrower kernel than MLAS (AVX2 instead of AVX-512), numpy alone is no floor."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    by_numpy, by_ort = [], []
    for m, k, n in [(4096, 384, 1536), (4096, 1536, 384), (4096, 384, 384)]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2 * m * k * n
        # One timing is ~0.1 s of calls: single calls swing by 2x on a shared machine.
        calls = max(3, int(2e10 / flops))
        a @ b  # warm-up
        best = min(timed(lambda: [a @ b for _ in range(calls)]) for _ in range(repeat)) / calls
        by_numpy.append(flops / best / 1e9)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["y"])], "sgemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
            [numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {"a": a}
        session.run(None, feed)  # warm-up
        best = min(timed(lambda: [session.run(None, feed) for _ in range(calls)]) for _ in range(repeat)) / calls
        by_ort.append(flops / best / 1e9)
    rates = [max(x, y) for x, y in zip(by_numpy, by_ort)]
    emit({"impl": "sgemm", "mode": "floor", "gflops": round(statistics.fmean(rates), 2),
          "gflops_by_shape": [round(r, 2) for r in rates],
          "gflops_numpy": round(statistics.fmean(by_numpy), 2),
          "gflops_onnxruntime": round(statistics.fmean(by_ort), 2)})


def bf16_floor(repeat: int) -> None:
    """oneDNN's bf16 matmul at the floor's shapes (threads: OpenMP's default, every core). The
    source is already bf16 (akidb's kernel rounds fp32 as it reads), and the weights are packed
    once in the layout oneDNN picks; their values do not change the time, so they stay zero."""
    import ctypes
    import glob

    found = glob.glob(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))
    if not found:
        die(f"no libdnnl.so.3 under {sys.prefix}/lib: pip install onednn-cpu-gomp")
    dnnl = ctypes.CDLL(found[0])
    ptr = ctypes.c_void_p

    def check(status: int, what: str) -> None:
        if status != 0:
            die(f"oneDNN {what} failed with status {status}")

    # dnnl_types.h (oneDNN 3.x): data types, format tags, queries, execution arguments.
    f32, bf16, tag_any, tag_ab = 3, 2, 1, 3
    query_impl_info, query_weights_md = 8, 131
    arg_src, arg_weights, arg_dst = 1, 33, 17

    class Arg(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_int), ("memory", ptr)]

    engine, stream = ptr(), ptr()
    check(dnnl.dnnl_engine_create(ctypes.byref(engine), 1, ctypes.c_size_t(0)), "engine_create (cpu)")
    check(dnnl.dnnl_stream_create(ctypes.byref(stream), engine, ctypes.c_uint(1)), "stream_create")
    dnnl.dnnl_primitive_desc_query_md.restype = ptr

    def desc(dims: list[int], data_type: int, tag: int):
        md = ptr()
        shape = (ctypes.c_int64 * 12)(*dims)
        check(dnnl.dnnl_memory_desc_create_with_tag(ctypes.byref(md), ctypes.c_int(len(dims)), shape,
                                                    ctypes.c_int(data_type), ctypes.c_int(tag)), "memory_desc")
        return md

    def memory(md):
        mem = ptr()
        allocate = ptr(2**64 - 1)  # DNNL_MEMORY_ALLOCATE
        check(dnnl.dnnl_memory_create(ctypes.byref(mem), md, engine, allocate), "memory_create")
        return mem

    rates, kernels = [], set()
    for m, k, n in [(4096, 384, 1536), (4096, 1536, 384), (4096, 384, 384)]:
        pd, prim, info = ptr(), ptr(), ctypes.c_char_p()
        check(dnnl.dnnl_matmul_primitive_desc_create(ctypes.byref(pd), engine, desc([m, k], bf16, tag_ab),
                                                      desc([k, n], bf16, tag_any), None,
                                                      desc([m, n], f32, tag_ab), None), "matmul_primitive_desc")
        check(dnnl.dnnl_primitive_desc_query(pd, ctypes.c_int(query_impl_info), ctypes.c_int(0),
                                             ctypes.byref(info)), "query impl_info")
        kernel = (info.value or b"?").decode()
        if "bf16" not in kernel and "amx" not in kernel:
            die(f"oneDNN runs this bf16 matmul as {kernel!r}: the CPU has no bf16 instructions")
        kernels.add(kernel)
        check(dnnl.dnnl_primitive_create(ctypes.byref(prim), pd), "primitive_create")
        weights = ptr(dnnl.dnnl_primitive_desc_query_md(pd, ctypes.c_int(query_weights_md), ctypes.c_int(0)))
        args = (Arg * 3)(Arg(arg_src, memory(desc([m, k], bf16, tag_ab))), Arg(arg_weights, memory(weights)),
                         Arg(arg_dst, memory(desc([m, n], f32, tag_ab))))

        def run() -> None:
            check(dnnl.dnnl_primitive_execute(prim, stream, ctypes.c_int(3), args), "primitive_execute")
            check(dnnl.dnnl_stream_wait(stream), "stream_wait")

        flops = 2 * m * k * n
        calls = max(3, int(4e10 / flops))
        run()  # warm-up
        best = min(timed(lambda: [run() for _ in range(calls)]) for _ in range(repeat)) / calls
        rates.append(flops / best / 1e9)
    emit({"impl": "onednn", "mode": "bf16-floor", "gflops": round(statistics.fmean(rates), 2),
          "gflops_by_shape": [round(r, 2) for r in rates], "kernel": ", ".join(sorted(kernels))})


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


class Embedder:
    def __init__(self, model_dir: str, onnx_file: str, threads: int | None, optimize: bool = False):
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            die(f"{e.name} is not installed; run `cargo run --release --example bench -- setup` (target/bench-venv) "
                "or pip install onnxruntime tokenizers numpy")
        self.np = np
        st = read_json(os.path.join(model_dir, "sentence_bert_config.json"), "sentence_bert_config.json")
        self.max_seq_length = int(st["max_seq_length"])
        pooling = read_json(os.path.join(model_dir, "1_Pooling", "config.json"), "1_Pooling/config.json")
        if pooling.get("pooling_mode_mean_tokens"):
            self.pooling = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_lasttoken"):
            self.pooling = "last"
        else:
            die(f"unsupported pooling in {model_dir}/1_Pooling/config.json (mean, CLS or last token only)")
        # sentence-transformers' Dense modules (weights in safetensors), run after pooling
        # unless the graph outputs sentence_embedding (which holds them).
        self.dense = []
        modules_path = os.path.join(model_dir, "modules.json")
        modules = read_json(modules_path, "modules.json") if os.path.isfile(modules_path) else []
        for m in modules:
            if m["type"].rsplit(".", 1)[-1] == "Dense":
                cfg = read_json(os.path.join(model_dir, m["path"], "config.json"), "Dense config")
                w = read_safetensors(os.path.join(model_dir, m["path"], "model.safetensors"))
                act = (cfg.get("activation_function") or "Tanh").rsplit(".", 1)[-1]
                self.dense.append((w["linear.weight"], w.get("linear.bias"), act))
        tok_cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        tok_cfg = read_json(tok_cfg_path, "tokenizer_config.json") if os.path.isfile(tok_cfg_path) else {}

        tok_path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(tok_path):
            die(f"tokenizer.json not found in {model_dir}")
        self.tokenizer = Tokenizer.from_file(tok_path)
        # tokenizer.json may carry fixed padding/truncation (MiniLM's says 128): replace both.
        pad = self.tokenizer.padding or {}
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_token = pad.get("pad_token") or tok_cfg.get("pad_token") or "[PAD]"
        pad_id = pad.get("pad_id", self.tokenizer.token_to_id(pad_token) or 0)
        self.tokenizer.enable_padding(
            pad_id=pad_id,
            pad_type_id=pad.get("pad_type_id", 0),
            pad_token=pad_token,
            direction=pad.get("direction") or tok_cfg.get("padding_side", "right"),
        )

        onnx_path = os.path.join(model_dir, onnx_file)
        if not os.path.isfile(onnx_path):
            die(f"ONNX file not found: {onnx_path}")
        self.impl = "python-optimized" if optimize else "python"
        if optimize:
            onnx_path = optimized_graph(model_dir, onnx_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads if threads else (os.cpu_count() or 1)
        self.threads = opts.intra_op_num_threads
        self.session = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        # Decoder exports (onnx-community's Qwen3): an empty key/value cache per layer.
        self.past = {i.name: (i.shape[1], i.shape[3]) for i in self.session.get_inputs()
                     if i.name.startswith("past_key_values.")}
        unknown = set(self.inputs) - {"input_ids", "attention_mask", "token_type_ids", "position_ids"} - set(self.past)
        if unknown:
            die(f"{onnx_path} wants inputs this peer does not provide: {sorted(unknown)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if "sentence_embedding" in outputs:
            self.output, self.pooling, self.dense = "sentence_embedding", "graph", []
        else:
            self.output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]

    def encode(self, texts: list[str]):
        return self.tokenizer.encode_batch(texts)

    def embed_encodings(self, encodings):
        np = self.np
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        for name, (heads, head_dim) in self.past.items():
            feeds[name] = np.zeros((len(encodings), heads, 0, head_dim), dtype=np.float32)
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        hidden = self.session.run([self.output], feeds)[0]
        if self.pooling == "graph":
            pooled = hidden
        elif self.pooling == "mean":
            m = mask[:, :, None].astype(hidden.dtype)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        elif self.pooling == "last":
            last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
            pooled = hidden[np.arange(len(encodings)), last, :]
        else:
            pooled = hidden[:, 0, :]
        for weight, bias, act in self.dense:
            pooled = pooled @ weight.T + (bias if bias is not None else 0)
            pooled = {"Tanh": np.tanh, "Identity": lambda x: x, "ReLU": lambda x: np.maximum(x, 0)}[act](pooled)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)

    def embed(self, texts: list[str]):
        return self.embed_encodings(self.encode(texts))


def read_safetensors(path: str) -> dict:
    """A safetensors file's float tensors as numpy arrays (F32/F16), without the safetensors package."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        dtype = {"F32": np.float32, "F16": np.float16}[t["dtype"]]
        out[name] = np.frombuffer(data[8 + n + start:8 + n + end], dtype=dtype).reshape(t["shape"]).astype(np.float32)
    return out


def read_corpus(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        die(f"corpus not found: {path}")
    if not texts:
        die(f"corpus {path} has no texts")
    return texts


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def throughput(emb: Embedder, texts: list[str], batch: int, repeat: int) -> None:
    lengths = [sum(e.attention_mask) for e in emb.encode(texts)]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    batches = [[texts[i] for i in order[s : s + batch]] for s in range(0, len(order), batch)]
    tokens = sum(lengths)

    def one_pass() -> float:
        start = time.perf_counter()
        for b in batches:
            emb.embed(b)
        return time.perf_counter() - start

    one_pass()  # warm-up
    best = min(one_pass() for _ in range(repeat))
    emit({
        "impl": emb.impl, "mode": "throughput", "texts": len(texts), "tokens": tokens,
        "seconds": round(best, 6), "texts_per_s": round(len(texts) / best, 3),
        "tokens_per_s": round(tokens / best, 3),
    })


def latency(emb: Embedder, text: str, iterations: int, warmup: int) -> None:
    np = emb.np
    for _ in range(warmup):
        emb.embed([text])
    samples = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        start = time.perf_counter_ns()
        emb.embed([text])
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    # Nearest rank, sorted[round half up((n - 1) * p)]: the same rule as the akidb latency example.
    ordered = np.sort(samples)
    p50, p95, p99 = (ordered[min(int((len(ordered) - 1) * p + 0.5), len(ordered) - 1)] for p in (0.50, 0.95, 0.99))
    emit({
        "impl": emb.impl, "mode": "latency", "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
        "p99_ms": round(float(p99), 4), "mean_ms": round(float(samples.mean()), 4), "iterations": iterations,
    })


def check(emb: Embedder, reference: str, min_cosine: float, batch: int) -> int:
    np = emb.np
    texts, refs = [], []
    try:
        with open(reference, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    texts.append(row["text"])
                    refs.append(row["embedding"])
    except FileNotFoundError:
        die(f"reference file not found: {reference}")
    except (json.JSONDecodeError, KeyError) as e:
        die(f"{reference}:{n}: expected {{\"text\", \"embedding\"}} JSON: {e}")
    if not texts:
        die(f"{reference} has no rows")
    got = np.concatenate([emb.embed(texts[s : s + batch]) for s in range(0, len(texts), batch)])
    want = np.asarray(refs, dtype=np.float64)
    if want.shape != got.shape:
        die(f"reference vectors are {want.shape[1]}-dimensional, the model gives {got.shape[1]}")
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    cos = (got.astype(np.float64) * want).sum(axis=1)
    worst = int(cos.argmin())
    ok = bool(cos[worst] >= min_cosine)
    emit({
        "impl": emb.impl, "mode": "check", "texts": len(texts), "min_cosine": round(float(cos[worst]), 8),
        "mean_cosine": round(float(cos.mean()), 8), "worst_text": texts[worst][:80], "threshold": min_cosine, "ok": ok,
    })
    if not ok:
        print(f"bench_peer: FAIL: min cosine {cos[worst]:.6f} < {min_cosine} (text: {texts[worst][:80]!r})", file=sys.stderr)
    return 0 if ok else 1


def stats(model_dir: str, texts: list[str]) -> None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        die("tokenizers is not installed (pip install tokenizers)")
    max_len = int(read_json(os.path.join(model_dir, "sentence_bert_config.json"), "sentence_bert_config.json")["max_seq_length"])
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    full = [len(e.ids) for e in tok.encode_batch(texts)]
    used = [min(n, max_len) for n in full]
    bands = [("<10", 0, 9), ("10-30", 10, 30), ("31-100", 31, 100), ("101-256", 101, 256), (">256", 257, 10**9)]
    counts = {name: sum(lo <= n <= hi for n in full) for name, lo, hi in bands}
    q = statistics.quantiles(full, n=20)
    emit({
        "mode": "stats", "texts": len(texts), "max_seq_length": max_len, "bands": counts,
        "min": min(full), "p05": q[0], "p25": q[4], "median": statistics.median(full), "p75": q[14],
        "p95": q[18], "max": max(full), "mean": round(statistics.fmean(full), 1),
        "truncated": sum(n > max_len for n in full), "tokens_after_truncation": sum(used),
    })


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Python peer for akidb's benchmarks (onnxruntime + tokenizers + numpy).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--mode", choices=["throughput", "latency", "check", "stats", "floor", "bf16-floor"])
    ap.add_argument("--optimize", action="store_true",
                    help="run the graph through onnxruntime.transformers.optimizer first (SkipLayerNorm, BiasGelu)")
    ap.add_argument("--corpus", help="texts, one per line (throughput, stats)")
    ap.add_argument("--batch", type=int, default=32, help="texts per inference call (default 32)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the corpus; best wins (default 3)")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog.", help="latency text")
    ap.add_argument("--iterations", type=int, default=300, help="timed latency calls (default 300)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed latency calls first (default 30)")
    ap.add_argument("--check", metavar="REFERENCE.jsonl", help="same as --mode check --reference FILE")
    ap.add_argument("--reference", help="reference jsonl for --mode check")
    ap.add_argument("--min-cosine", type=float, default=0.9999, help="check threshold (default 0.9999)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub repo id to find in HF_HOME (default {DEFAULT_MODEL})")
    ap.add_argument("--model-dir", help="model snapshot directory (default: from $HF_HOME, see below)")
    ap.add_argument("--onnx-file", default="onnx/model.onnx", help="ONNX graph inside the model (default onnx/model.onnx)")
    ap.add_argument("--threads", type=int, help="intra-op threads (default os.cpu_count())")
    args = ap.parse_args()

    mode = args.mode
    if args.check:
        if mode not in (None, "check"):
            die("--check cannot be combined with --mode " + mode)
        mode, args.reference = "check", args.check
    if mode is None:
        ap.error("give --mode throughput|latency|check|stats or --check REFERENCE.jsonl")
    for name in ("batch", "repeat", "iterations"):
        if getattr(args, name) < 1:
            die(f"--{name} must be at least 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        die("--warmup must be >= 0 and --threads >= 1")
    if mode in ("throughput", "stats") and not args.corpus:
        die(f"--mode {mode} needs --corpus FILE")
    if mode == "check" and not args.reference:
        die("--mode check needs --reference FILE (or use --check FILE)")

    if mode == "floor":
        floor(args.repeat)
        return
    if mode == "bf16-floor":
        bf16_floor(args.repeat)
        return
    model_dir = args.model_dir or resolve_model_dir(args.model)
    if not os.path.isdir(model_dir):
        die(f"model directory not found: {model_dir}")
    if mode == "stats":
        stats(model_dir, read_corpus(args.corpus))
        return
    corpus = read_corpus(args.corpus) if mode == "throughput" else None
    emb = Embedder(model_dir, args.onnx_file, args.threads, args.optimize)
    if mode == "throughput":
        throughput(emb, corpus, args.batch, args.repeat)
    elif mode == "latency":
        latency(emb, args.text, args.iterations, args.warmup)
    else:
        sys.exit(check(emb, args.reference, args.min_cosine, args.batch))


if __name__ == "__main__":
    main()
