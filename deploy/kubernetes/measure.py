"""Measures one akidb pod's capacity: the numbers the HPA target and resource requests come from.

    akidb serve --model sentence-transformers/all-MiniLM-L6-v2 --threads 2 --port 8080 &
    python3 deploy/kubernetes/measure.py http://127.0.0.1:8080 20 $!

Four clients send 32 texts of 40-80 words back to back for the given seconds; prints the tokens
per second the server computed (akidb_tokens_total before and after) and its peak RSS (VmHWM).
"""

import json
import re
import sys
import threading
import time
import urllib.request

base, seconds = sys.argv[1], float(sys.argv[2])
pid = sys.argv[3] if len(sys.argv) > 3 else None
words = "the quick brown fox jumps over a lazy dog while vector search engines index river stones".split()
texts = [" ".join(words[(i * 3 + k) % len(words)] for k in range(40 + i % 40)) for i in range(32)]
body = json.dumps({"inputs": texts}).encode()


def tokens():
    metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    return sum(float(v) for v in re.findall(r"^akidb_tokens_total\{[^}]*\} (\S+)$", metrics, re.M))


def client(stop):
    while time.time() < stop:
        req = urllib.request.Request(base + "/embed", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()


before, started = tokens(), time.time()
threads = [threading.Thread(target=client, args=(started + seconds,)) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.time() - started
result = {"tokens_per_second": round((tokens() - before) / elapsed)}
if pid:
    status = open(f"/proc/{pid}/status").read()
    result["peak_rss_mib"] = round(int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024)
print(json.dumps(result))
