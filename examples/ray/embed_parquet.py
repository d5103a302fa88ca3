"""Embed a Parquet corpus with Ray Data, each actor keeping one `akidb embed --worker` open.

    python examples/ray/embed_parquet.py --input corpus.parquet --output embedded/ \
        --model sentence-transformers/all-MiniLM-L6-v2 --actors 4 --threads 2

Reads the input with `ray.data.read_parquet`, runs `map_batches` with a callable class (so Ray
keeps a pool of actors, each with its model loaded once in its own akidb process), and writes a
directory of Parquet files with the input's columns plus `embedding` (fixed-size list of float32,
the same column type `akidb embed --output x.parquet` writes). Worker protocol: one
{"texts": [...]} line in, one {"embeddings": [[...], ...]} line out (docs/operations.md).
"""

import argparse
import json
import os
import shutil
import subprocess

import pyarrow as pa
import ray


class AkidbEmbedder:
    """One Ray actor: an akidb worker process that lives as long as the actor."""

    def __init__(self, akidb, model, threads, text_column):
        self.text_column = text_column
        self.proc = subprocess.Popen(
            [akidb, "embed", "--worker", "--model", model, "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        self.proc.stdin.write(json.dumps({"texts": texts}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"akidb worker exited with status {self.proc.wait()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"akidb: {answer['error']}")
        vectors = answer["embeddings"]
        dim = len(vectors[0]) if vectors else 0
        flat = pa.array([x for v in vectors for x in v], type=pa.float32())
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))

    def __del__(self):
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="Parquet file or directory")
    p.add_argument("--output", required=True, help="directory for the Parquet output")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--akidb", default=shutil.which("akidb") or "akidb", help="path to the akidb binary")
    p.add_argument("--text-column", default="text")
    p.add_argument("--actors", type=int, default=2, help="akidb processes (the actor pool's size)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (and Ray CPUs) per actor")
    p.add_argument("--batch-size", type=int, default=256, help="rows per request to a worker")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray cluster")
    args = p.parse_args()

    # The akidb processes find the model cache through the driver's environment.
    env = {k: os.environ[k] for k in ("HF_HOME", "HF_HUB_OFFLINE") if k in os.environ}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
    ds = ray.data.read_parquet(args.input)
    ds = ds.map_batches(
        AkidbEmbedder,
        fn_constructor_kwargs={
            "akidb": os.path.abspath(args.akidb),
            "model": args.model,
            "threads": args.threads,
            "text_column": args.text_column,
        },
        batch_format="pyarrow",
        batch_size=args.batch_size,
        concurrency=args.actors,
        num_cpus=args.threads,
    )
    ds.write_parquet(args.output)
    ray.shutdown()


if __name__ == "__main__":
    main()
