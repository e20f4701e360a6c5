#!/usr/bin/env bash
# First call of a study window (issue 15), seconds: park the first half of the SmolLM2 GGUF and unpack the text corpus
# on this machine. The next call (study.sh, carrying the second half) must start less than 30 s later, while the
# machine is still warm. Carry: .carry/stage-1. Brings back: stage-1.log.
source "$(dirname "$0")/common.sh" "$@"
start_log stage-1
cp "$CARRY"/stage-1/*.part* "$STAGE_DIR"/
cp "$CARRY"/stage-1/gguf.sha256 "$STAGE_DIR"/
mkdir -p "$ROPEKIT_CACHE/corpora"
tar -xzf "$CARRY/stage-1/corpus.tar.gz" -C "$ROPEKIT_CACHE/corpora"
ls -la "$STAGE_DIR" "$ROPEKIT_CACHE/corpora"
