#!/usr/bin/env bash
# One study call (issue 15), < 10 min: (first call of a machine) join and verify the GGUF, convert it once; then train
# and evaluate the given rows of one slice, all on this machine, and bring back the slice's results.json.
#   bash benchmarks/gpu/study.sh SLICE [LABELS] [--train-only]
# Carry: .whl (gguf), .carry/stage-2 on the first call after stage-1.sh. Brings back: results-SLICE.json (or
# partial-SLICE.json when the time limit stopped it), study-SLICE.log. Plan: python benchmarks/gpu/plan.py --next.
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"
slice=${1:?slice}; labels=${2:-}; train_only=${3:-}
[ "$labels" = "--train-only" ] && { labels=; train_only=--train-only; }
start_log "study-$slice"
gguf=$STAGE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$SMOKE" = 1 ] || [ ! -f "$ROPEKIT_CACHE/models/smollm2-135m-instruct/model.safetensors" ]; then
  if [ ! -f "$gguf" ]; then
    [ -d "$CARRY/stage-2" ] && cp "$CARRY"/stage-2/*.part* "$STAGE_DIR"/
    "$PY" benchmarks/gpu/stage.py join "$gguf" "$(cut -d' ' -f1 "$STAGE_DIR/gguf.sha256")" "$STAGE_DIR"
  fi
  if [ "$SMOKE" = 0 ]; then
    ROPEKIT_SMOLLM2_GGUF=$gguf "$PY" -c "from ropekit.embedded import default_model_dir; print('model:', default_model_dir())"
  fi
fi
limit=$(( 570 - SECONDS ))
echo "-- study slice $slice ${labels:-(all rows)} $train_only, time limit ${limit} s ($(date -u +%T))"
status=0
timeout --signal=INT --kill-after=20 "$limit" "$PY" benchmarks/gpu/study_call.py --slice "$slice" ${labels:+--only "$labels"} \
  --output "$STUDY_DIR" --bring-back "$OUT" $train_only $SMOKE_FLAG || status=$?
echo "-- done (exit $status, $SECONDS s in this call); brought back: $(ls "$OUT" | tr '\n' ' ')"
