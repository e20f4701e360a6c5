# Sourced by every device-call script in this folder: settings, offline wheels, logging. Not run on its own.
#
# On the GPU machine ($OUT: the folder whose files come back): wheels from .whl/ go to /tmp/ropekit-site once per
# machine, the staged model and caches live under /root (they survive between calls while the machine stays warm),
# and every line printed goes to $OUT/<call>.log as well.
# With --smoke (on a CPU, e.g. in the tests): the same steps in a scratch folder ($WORK, default a new temp dir),
# with the carried files taken from $WORK/carry (made by `prepare.sh --smoke $WORK/carry`) and the tiny stand-ins.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
SMOKE=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then SMOKE=1; else ARGS+=("$arg"); fi
done
if [ "$SMOKE" = 1 ]; then
  WORK=${WORK:-$(mktemp -d)}
  OUT=${OUT:-$WORK/out}
  CARRY=$WORK/carry
  STAGE_DIR=$WORK/stage
  export ROPEKIT_CACHE=$WORK/cache
  STUDY_DIR=$WORK/study
  RESULTS_KEEP=$WORK/kept
  SMOKE_FLAG=--smoke
  PY=${PYTHON:-python3}
else
  : "${OUT:?OUT is not set: set OUT to the folder whose files come back, or pass --smoke}"
  CARRY=$ROOT/.carry
  STAGE_DIR=/root/ropekit-stage
  export ROPEKIT_CACHE=/root/ropekit-cache
  STUDY_DIR=/root/study
  RESULTS_KEEP=/root/ropekit-results
  SMOKE_FLAG=
  PY=python3
fi
mkdir -p "$OUT" "$STAGE_DIR" "$ROPEKIT_CACHE" "$RESULTS_KEEP"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/ropekit-site
if [ "$SMOKE" = 0 ] && compgen -G ".whl/*.whl" > /dev/null && [ ! -f "$SITE/.installed" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  touch "$SITE/.installed"
fi
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks:$SITE${PYTHONPATH:+:$PYTHONPATH}"

# start_log NAME: everything printed from here on also goes to $OUT/NAME.log; prints what runs where.
start_log() {
  exec > >(tee -a "$OUT/$1.log") 2>&1
  echo "== $1 $(date -u +%FT%TZ) on $(hostname); smoke=$SMOKE"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
}

# The results-file tag of this device: h100, h200, … (smoke: "smoke").
device_tag() {
  if [ "$SMOKE" = 1 ]; then echo smoke; else "$PY" -c "from _common import gpu_tag; print(gpu_tag() or 'cpu')"; fi
}

# seed FILE: put the newest earlier copy of a results file (kept on this machine, or committed in benchmarks/results)
# into $OUT, so a resumed benchmark continues it.
seed() {
  if [ -f "$RESULTS_KEEP/$1" ]; then cp "$RESULTS_KEEP/$1" "$OUT/$1"
  elif [ -f "benchmarks/results/$1" ] && [ "$SMOKE" = 0 ]; then cp "benchmarks/results/$1" "$OUT/$1"; fi
}

# bench SCRIPT ARGS…: run one benchmark into $OUT/SCRIPT-TAG.json; a failure is logged and the call goes on.
bench() {
  local script=$1; shift
  local file="$script-$(device_tag).json"
  echo "-- $script $* ($(date -u +%T))"
  "$PY" "benchmarks/$script.py" $SMOKE_FLAG --json "$OUT/$file" "$@" || echo "!! $script failed (exit $?)"
  [ -f "$OUT/$file" ] && cp "$OUT/$file" "$RESULTS_KEEP/$file"
  return 0
}
