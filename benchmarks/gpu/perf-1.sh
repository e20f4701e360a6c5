#!/usr/bin/env bash
# Device call perf-1 (issue 14/31), ~6.5 min on one H100 or H200. Order: first the logit scale's cost (EABF ÷ ABF:
# training step, prefill and decode at 16K/32K, attention alone at 16K/32K), then training throughput at 16K (hf,
# hf-best, ropekit, ropekit-default interleaved, then the knob rows in the time left); perf-2 adds 32K to the same file.
# Time: budgets 165 s + 180 s of measuring, ~40 s of wheel install and interpreter starts, and a row or warm-up started
# just before a budget ends may overrun it by ~10 s: ~6.5 min, far inside the 10-minute limit, and with perf-2
# (~6.5 min) one 15-minute window when the machine starts quickly. A call killed at the limit keeps every row
# measured so far (each results file is rewritten after every row and every timed round).
# Carry: .whl (liger-kernel). Brings back: logit_scale_overhead-<gpu>.json, train_throughput-<gpu>.json, perf-1.log.
source "$(dirname "$0")/common.sh" "$@"
start_log perf-1
bench logit_scale_overhead --budget 165
seed "train_throughput-$(device_tag).json"
bench train_throughput --lengths 16k --resume --budget 180
