#!/usr/bin/env bash
# Device call perf-2 (issue 14), ~6.5 min: training throughput at 32K (added to the 16K rows of perf-1) and
# evaluation throughput at 32K on SmolLM2's shape with random weights (its tokenizer travels in .carry).
# Carry: .whl, .carry/smollm2-tokenizer. Brings back: train_throughput-<gpu>.json, eval_throughput-<gpu>.json, perf-2.log.
source "$(dirname "$0")/common.sh" "$@"
start_log perf-2
seed "train_throughput-$(device_tag).json"
bench train_throughput --lengths 32k --resume --budget 330
bench eval_throughput --random-weights --tokenizer "$CARRY/smollm2-tokenizer" --budget 150
