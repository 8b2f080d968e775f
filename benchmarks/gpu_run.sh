#!/usr/bin/env bash
# The one prepared GPU run (issue 17, docs/gpu.md). On the GPU machine, from the repo root:
#
#   bash benchmarks/gpu_run.sh "$OUT"            # carry .gpu-wheels (benchmarks/gpu_wheels.sh)
#   bash benchmarks/gpu_run.sh OUT --cpu-smoke   # the same on a CPU, tiny (~2 min)
#
# Installs the carried wheels whose module is missing into a private folder (nothing in the
# system Python changes), puts it and this tree on PYTHONPATH, and runs benchmarks/gpu_run.py,
# which writes its JSON under OUT and prints a summary table last. Extra arguments go to it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_run.sh OUT_DIR [gpu_run.py options]}
shift
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.gpu-wheels}
SITE=${GPU_SITE:-/tmp/gpu-run-site}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
installed=()
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  missing=()
  for whl in "$WHEELS"/*.whl; do
    module=$(basename "$whl" | cut -d- -f1)  # transformer_lens, datasets, dill, ...
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is not None)" \
      && missing+=("$whl")
  done
  if (( ${#missing[@]} )); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${missing[@]}" || { echo "gpu_run.sh: wheel install failed" >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    for whl in "${missing[@]}"; do installed+=("$(basename "$whl")"); done
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GPU_RUN_INSTALLED="${installed[*]}"
echo "[gpu_run.sh] installed: ${installed[*]:-nothing}"
# TransformerLens imports `datasets` only for its dataset helpers, which tlatlas never calls:
# if that import breaks on the machine's pyarrow/fsspec, a stub stands in and the run goes on.
if ! err=$("$PY" -c "import transformer_lens" 2>&1); then
  echo "[gpu_run.sh] import transformer_lens failed: $(echo "$err" | tail -1)"
  if grep -q "datasets\|pyarrow\|fsspec\|multiprocess\|dill" <<<"$err"; then
    stub=/tmp/gpu-run-stub/datasets
    mkdir -p "$stub"
    printf 'class Dataset: ...\nclass IterableDataset: ...\ndef load_dataset(*a, **k):\n    raise ImportError("stub datasets (gpu_run.sh)")\n' >"$stub/__init__.py"
    for m in arrow_dataset iterable_dataset load; do echo 'from datasets import *' >"$stub/$m.py"; done
    export PYTHONPATH="/tmp/gpu-run-stub:$PYTHONPATH" GPU_RUN_DATASETS_STUB=1
    "$PY" -c "import transformer_lens" && echo "[gpu_run.sh] running with the datasets stub"
  fi
fi
args=()
[[ -f "$WHEELS/tokenizer/tokenizer.json" ]] && args+=(--tokenizer "$WHEELS/tokenizer")
"$PY" benchmarks/gpu_run.py --out "$OUT" "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_run.log"
exit "${PIPESTATUS[0]}"
