#!/usr/bin/env bash
# Fails unless ONNX Runtime itself put nodes on CoreML: reads its partitioning report from an akidb
# log made with ONNX Runtime's info messages shown, e.g.
#
#   RUST_LOG=info,ort=info akidb embed --device coreml --model M "text" 2> coreml.log
#   scripts/check-coreml-partition.sh coreml.log
#
# akidb's own "registering the CoreML execution provider" only says the provider was asked for;
# ONNX Runtime's CoreMLExecutionProvider::GetCapability line says how many of the graph's nodes
# it took ("number of partitions supported by CoreML: P number of nodes in the graph: N number of
# nodes supported by CoreML: K"). Every such report must have K > 0, and there must be one.
set -euo pipefail

die() { echo "check-coreml-partition: error: $*" >&2; exit 1; }
[ $# -eq 1 ] && [ -f "$1" ] || die "usage: $0 LOG (an akidb log made with RUST_LOG=info,ort=info)"

reports=$(grep -o 'number of partitions supported by CoreML: [0-9]* *number of nodes in the graph: [0-9]* *number of nodes supported by CoreML: [0-9]*' "$1" || true)
[ -n "$reports" ] ||
  die "$1 has no CoreMLExecutionProvider::GetCapability report: was CoreML registered, and ONNX Runtime's log shown at info (RUST_LOG=info,ort=info)?"
while read -r line; do
  read -r partitions nodes coreml <<<"$(tr -cs '0-9' ' ' <<<"$line")"
  [ "$coreml" -gt 0 ] || die "ONNX Runtime assigned none of the graph's $nodes nodes to CoreML: everything ran on the CPU"
  echo "CoreML takes $coreml of $nodes nodes in $partitions partition(s)"
done <<<"$reports"
