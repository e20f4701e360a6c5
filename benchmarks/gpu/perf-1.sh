#!/usr/bin/env bash
# Device call perf-1 (issue 14), ~6 min on one H100: the logit scale's cost (EABF vs ABF training step at 16K/32K/64K,
# attention alone at 8K-64K) and training throughput at 16K (plain HF, each knob, ropekit, best).
# Carry: .whl (liger-kernel). Brings back: logit_scale_overhead-<gpu>.json, train_throughput-<gpu>.json, perf-1.log.
source "$(dirname "$0")/common.sh" "$@"
start_log perf-1
bench logit_scale_overhead --budget 230
seed "train_throughput-$(device_tag).json"
bench train_throughput --lengths 16k --resume --budget 260
