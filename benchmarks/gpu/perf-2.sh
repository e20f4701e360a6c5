#!/usr/bin/env bash
# Device call perf-2 (issue 14/31), ~6.5 min: training throughput at 32K, the headline variants only, added to the 16K
# rows of perf-1 (run perf-1 first: its file, kept on the machine or filed in benchmarks/results, is resumed here), then
# evaluation throughput at 32K on SmolLM2's shape with random weights (its tokenizer travels in .carry).
# Time: budgets 200 s + 150 s, ~40 s of install and starts, ≤ 15 s of overrun by a started 32K warm-up: ~6.7 min.
# Carry: .whl, .carry/smollm2-tokenizer. Brings back: train_throughput-<gpu>.json, eval_throughput-<gpu>.json, perf-2.log.
source "$(dirname "$0")/common.sh" "$@"
start_log perf-2
seed "train_throughput-$(device_tag).json"
bench train_throughput --lengths 32k --resume --knobs none --budget 200
bench eval_throughput --random-weights --tokenizer "$CARRY/smollm2-tokenizer" --budget 150
