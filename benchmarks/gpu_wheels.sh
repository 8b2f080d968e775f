#!/usr/bin/env bash
# Fill .gpu-wheels/ (git-ignored; carried to the GPU machine) with what that machine lacks
# for tlatlas: its image has torch 2.11, transformers 5.17, peft, accelerate, jaxtyping,
# safetensors, tqdm, matplotlib, filelock, pandas, pyarrow, einops, rich, sentencepiece,
# but not transformer-lens, nor these of its imports: datasets (imported at
# `import transformer_lens`), dill and multiprocess (datasets' imports), beartype (the
# tests' --jaxtyping-packages=...,beartype.beartype). bitsandbytes, circuitsvis and gguf
# are not needed by the GPU run (bitsandbytes is over 100 MB; its tests skip).
# Also copies the SmolLM2 tokenizer (3.5 MB) for the random models' prompts.
#
#   bash benchmarks/gpu_wheels.sh          # then: du -sh .gpu-wheels
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GPU_WHEELS:-.gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=64
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" \
  transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 beartype==0.23.1
# the SmolLM2 tokenizer (from the embedded GGUF), when installed here
HF_HUB_OFFLINE=1 "$PY" - "$DEST/tokenizer" <<'PYEOF' || echo "no SmolLM2 tokenizer here: the GPU run trains one offline"
import sys
from transformers import AutoTokenizer
from tlatlas.models import weights_dir
AutoTokenizer.from_pretrained(str(weights_dir("smollm2-135m"))).save_pretrained(sys.argv[1])
PYEOF
ls -l "$DEST"
wheels=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
printf '%s: %.1f MiB; source tree %.1f MiB; together %.1f MiB (limit %d MiB)\n' "$DEST" \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if (( total >= LIMIT_MIB * 1048576 )); then
  echo "over the ${LIMIT_MIB} MiB a device call carries" >&2
  exit 1
fi
