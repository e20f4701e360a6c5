#!/usr/bin/env bash
# One study call, < 10 min: (first call of a machine) join and verify the GGUF, convert it once; then train and
# evaluate the given rows of one slice (in the order given), all on this machine, and bring back the slice's results.
#   bash benchmarks/gpu/study.sh SLICE [LABELS] [--train-only] [--budget S] [--eval-reserve S] [--force]
# --budget: the device seconds the window has left when the call starts (the device's status says). The call ends
# BUDGET_MARGIN (default 45) seconds before it, and before the 600 s command limit; no step starts that would end later.
# A call whose rows plan.py estimates longer than that is refused before it starts (--force runs it anyway).
# Carry: .whl (gguf), .carry/stage-2 on the first call after stage-1.sh. Brings back: results-SLICE.json; while it
# runs and when stopped, partial-SLICE.json, trainlog-LABEL.jsonl, training-LABEL.json (written as produced), and
# study-SLICE.log. Plan: python benchmarks/gpu/plan.py --next.
source "$(dirname "$0")/common.sh" "$@"
set -- "${ARGS[@]}"
slice=; labels=; train_only=; budget=600; reserve=0; force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --train-only) train_only=--train-only ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --eval-reserve) reserve=${2:?--eval-reserve needs seconds}; shift ;;
    --force) force=1 ;;
    *) if [ -z "$slice" ]; then slice=$1; else labels=$1; fi ;;
  esac
  shift
done
: "${slice:?usage: study.sh SLICE [LABELS] [--train-only] [--budget S] [--eval-reserve S]}"
start_log "study-$slice"
gguf=$STAGE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$SMOKE" = 1 ] || [ ! -f "$ROPEKIT_CACHE/models/smollm2-135m-instruct/model.safetensors" ]; then
  if [ ! -f "$gguf" ]; then
    [ -d "$CARRY/stage-2" ] && cp "$CARRY"/stage-2/*.part* "$STAGE_DIR"/
    "$PY" benchmarks/gpu/stage.py join "$gguf" "$(cut -d' ' -f1 "$STAGE_DIR/gguf.sha256")" "$STAGE_DIR"
  fi
  if [ "$SMOKE" = 0 ]; then
    ROPEKIT_SMOLLM2_GGUF=$gguf "$PY" -c "from ropekit.models import default_model_dir; print('model:', default_model_dir())"
  fi
fi
margin=${BUDGET_MARGIN:-45}  # the transfer back and the machine's reply
end=$(( budget < 600 ? budget : 600 ))
deadline=$(( end - margin - SECONDS ))
[ "$deadline" -gt 30 ] || { echo "!! only $deadline s left before the deadline: not starting"; exit 3; }
if [ "$SMOKE" = 0 ] && [ -z "$train_only" ] && [ "$force" = 0 ]; then  # a call that cannot fit is refused, not half run
  estimate=$("$PY" benchmarks/gpu/plan.py --estimate "$slice" "$labels")
  [ "$estimate" -le "$deadline" ] || { echo "!! the rows need about $estimate s (plan.py), the deadline is in $deadline s: not starting (fewer rows, or --force)"; exit 3; }
  echo "-- estimated $estimate s of $deadline s"
fi
echo "-- study slice $slice ${labels:-(all rows)} $train_only, deadline in ${deadline} s ($(date -u +%T))"
status=0
timeout --signal=INT --kill-after=10 "$(( deadline + 20 ))" "$PY" benchmarks/gpu/study_call.py --slice "$slice" ${labels:+--only "$labels"} \
  --output "$STUDY_DIR" --bring-back "$OUT" --deadline "$deadline" --eval-reserve "$reserve" $train_only $SMOKE_FLAG || status=$?
echo "-- done (exit $status, $SECONDS s in this call); brought back: $(ls "$OUT" | tr '\n' ' ')"
