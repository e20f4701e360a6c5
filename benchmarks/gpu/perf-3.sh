#!/usr/bin/env bash
# Device call perf-3 (issue 14), ~4 min: the NIAH grid (10 lengths up to 32K × 10 depths) on SmolLM2's shape with random
# weights, and the longest sequence plain HF trains for the 1.1B shape (96K, 128K; anchor: 96K).
# Carry: .carry/smollm2-tokenizer. Brings back: niah_grid-<gpu>.json, max_length-<gpu>.json, perf-3.log.
source "$(dirname "$0")/common.sh" "$@"
start_log perf-3
bench niah_grid --random-weights --tokenizer "$CARRY/smollm2-tokenizer" --budget 220
seed "max_length-$(device_tag).json"
bench max_length --shape tinyllama-1.1b --variants plain --ladder 96k,128k --resume --budget 250
