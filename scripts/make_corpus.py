#!/usr/bin/env python3
"""Generate benches/corpus.txt: ~400 English texts, one per line, for the throughput benchmarks.

Deterministic (fixed seed, stdlib only). The texts are real prose found locally:

  * the Apache-2.0 text in LICENSE (repo root),
  * the Zen of Python (the `this` module),
  * docstrings of a fixed list of standard-library modules and of their public functions/classes,
  * the texts of the reference vectors in ../shared/reference/all-MiniLM-L6-v2.dev.jsonl (when
    that file is there; --reference overrides, --reference '' skips it).

Prose is split into sentences; each corpus text is a run of consecutive sentences (from a random
place) grown to a target length drawn from one of three bands of MiniLM (WordPiece) tokens: about a
third short (10-30), a third medium (30-100) and a third long (100-256), plus a few longer than 256
so truncation at max_seq_length is exercised. Token counts here are a stdlib estimate (no tokenizer
needed); `scripts/bench_peer.py --mode stats --corpus benches/corpus.txt` reports the real ones.

Standard-library docstrings change between Python versions, so a different Python may produce a
different corpus: the committed benches/corpus.txt is the reference, this script is how it was made
(Python 3.11). Usage:

  python3 scripts/make_corpus.py                 # writes benches/corpus.txt
  python3 scripts/make_corpus.py --out - --count 50
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import re
import sys

SEED = 20240611

# Modules whose docstrings hold plenty of plain English. Only names that exist are used.
MODULES = [
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email", "enum", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "http.client",
    "http.cookiejar", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale",
    "logging", "mailbox", "mimetypes", "multiprocessing", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "poplib", "pprint", "profile",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zipimport",
]

# (low, high) estimated-token bands and their share of the corpus.
BANDS = [
    ("short", 11, 28, 0.333),
    ("medium", 33, 95, 0.333),
    ("long", 108, 235, 0.314),
    ("over", 275, 420, 0.020),  # longer than max_seq_length=256: exercises truncation
]

WORD = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def estimate_tokens(text: str) -> int:
    """Rough WordPiece count for English: one per word piece/digit/punctuation mark, +2 specials."""
    n = 2
    for piece in WORD.findall(text):
        if piece[0].isalpha() and len(piece) > 7:
            n += 1 + (len(piece) - 4) // 6  # long/rare words split into several pieces
        else:
            n += 1
    return n


def clean(text: str) -> str:
    return " ".join(text.split())


def is_prose(paragraph: str) -> bool:
    """Plain sentences only: no examples, code, tables, option lists or headings."""
    lines = paragraph.splitlines()
    if any(line[:1].isspace() for line in lines):  # indented: code, tables, argument lists
        return False
    flat = clean(paragraph)
    if len(flat.split()) < 6:
        return False
    if any(mark in flat for mark in (">>>", "...", "::", "-->", "==", "{", "}", "$ ", "|")):
        return False
    if re.search(r"\w\(|\w\.\w|\w_\w|`", flat):  # calls, dotted names, identifiers, markup
        return False
    letters = sum(c.isalpha() or c.isspace() for c in flat)
    return letters / len(flat) >= 0.85 and flat[-1] in ".!?"


def paragraphs_of(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def license_paragraphs(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # The licence is indented as a whole: dedent each paragraph before judging it.
    return [clean(p) for p in paragraphs_of(text) if len(clean(p).split()) >= 4]


def zen_lines() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this  # noqa: F401
    return [line for line in codecs.decode(this.s, "rot13").splitlines()[2:] if line.strip()]


def docstring_paragraphs() -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    for name in MODULES:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module missing on this platform is simply skipped
            continue
        objects = [module]
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if getattr(obj, "__module__", None) == module.__name__:
                    objects.append(obj)
        for obj in objects:
            doc = obj.__doc__
            if not isinstance(doc, str) or id(doc) in seen:
                continue
            seen.add(id(doc))
            out.extend(clean(p) for p in paragraphs_of(inspect.cleandoc(doc)) if is_prose(p))
    return out


def reference_texts(path: str) -> list[str]:
    if not path or not os.path.exists(path):
        return []
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = clean(json.loads(line)["text"])
                if len(text.split()) >= 4:
                    texts.append(text)
    return texts


def sentences_of(paragraphs: list[str]) -> list[str]:
    out = []
    for p in paragraphs:
        out.extend(s for s in SENTENCE_END.split(p) if s.strip())
    return out


def cut_to(text: str, target: int) -> str:
    """The longest prefix of whole words whose estimate is at most target."""
    words = text.split()
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_tokens(" ".join(words[:mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def build(count: int, sentences: list[str], rng: random.Random) -> list[str]:
    texts: list[str] = []
    seen: set[str] = set()
    quotas = [(name, lo, hi, round(count * share)) for name, lo, hi, share in BANDS]
    quotas[0] = (*quotas[0][:3], count - sum(q[3] for q in quotas[1:]))
    for _name, lo, hi, quota in quotas:
        made, attempts = 0, 0
        while made < quota:
            attempts += 1
            if attempts > quota * 200:
                sys.exit(f"make_corpus: error: not enough distinct prose for {quota} texts of {lo}-{hi} tokens")
            target = rng.randint(lo, hi)
            i = rng.randrange(len(sentences))
            parts, est = [], 0
            while est < target:
                parts.append(sentences[i % len(sentences)])
                i += 1
                est = estimate_tokens(" ".join(parts))
            text = " ".join(parts)
            if est > hi:
                text = cut_to(text, target)
            if estimate_tokens(text) < lo or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            made += 1
    rng.shuffle(texts)
    return texts


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.path.join(root, "..", "shared")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(root, "benches", "corpus.txt"), help="output file, - for stdout")
    ap.add_argument("--count", type=int, default=400, help="number of texts (default 400)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--license", default=os.path.join(root, "LICENSE"))
    ap.add_argument(
        "--reference",
        default=os.path.join(shared, "reference", "all-MiniLM-L6-v2.dev.jsonl"),
        help="reference jsonl whose texts are used too ('' to skip)",
    )
    args = ap.parse_args()

    paragraphs = license_paragraphs(args.license) + zen_lines() + docstring_paragraphs()
    paragraphs += reference_texts(args.reference)
    # Keep the first occurrence of each paragraph (the licence also appears in the reference).
    paragraphs = list(dict.fromkeys(paragraphs))
    sentences = sentences_of(paragraphs)
    if len(sentences) < args.count:
        sys.exit(f"make_corpus: error: only {len(sentences)} sentences of prose found")
    texts = build(args.count, sentences, random.Random(args.seed))
    assert all(t and "\n" not in t and "\t" not in t for t in texts)
    body = "\n".join(texts) + "\n"
    if args.out == "-":
        sys.stdout.write(body)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(body)
        print(
            f"make_corpus: wrote {len(texts)} texts to {args.out} "
            f"({len(paragraphs)} paragraphs, {len(sentences)} sentences of source prose)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
