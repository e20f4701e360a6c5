#!/usr/bin/env bash
# Device calls perf-4…6 (issue 14), < 10 min each: climb the max_length ladder for one shape, continuing the results
# file (committed in benchmarks/results, or kept on this machine by an earlier call). Repeat until the ladder is done.
#   bash benchmarks/gpu/perf-max-length.sh SHAPE LORA VARIANTS [LADDER] [STEPS]
#   e.g. tinyllama-1.1b 0 ropekit | llama2-7b 8 plain,ropekit 96k,128k | llama2-7b 8 ropekit 96k,128k,192k,256k 1
# Brings back: max_length-<gpu>.json, max_length.log.
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"
shape=${1:?shape}; lora=${2:-0}; variants=${3:-plain,ropekit}; ladder=${4:-96k,128k,192k,256k}; steps=${5:-2}
start_log max_length
seed "max_length-$(device_tag).json"
bench max_length --shape "$shape" --lora "$lora" --variants "$variants" --ladder "$ladder" --steps "$steps" --resume --budget 540
