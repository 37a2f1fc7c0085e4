#!/usr/bin/env bash
# The one prepared GPU check (issue 11): decode and the RL step against TRL on CUDA in bf16, on random weights of
# the real SmolLM2-135M / MiniLM-L6 shapes (benchmarks/device_kit.py says why). Prepare here, once per session:
#     .venv/bin/python benchmarks/device_kit.py pack .devkit      # 20 MiB: configs, tokenizers, wheels
#     echo /.devkit/ >> .git/info/exclude
# then on the lent machine (the device tool's run, carry [".devkit"], timeout_s 540):
#     bash benchmarks/device_check.sh
# What comes back in $OUT: gpu.txt, versions.txt, decode.log and rl_step.log (each ends in its JSON line). Copy the
# figures into benchmarks/RESULTS.md with the card's name. Without a GPU, to check the script itself (tiny sizes):
#     DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python EXTRA_PATH=/work/trl-pkgs bash benchmarks/device_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
KIT=${KIT:-.devkit}
mkdir -p "$OUT"
[ -d "$KIT/whl" ] || { echo "error: $KIT/whl missing: run benchmarks/device_kit.py pack $KIT first" >&2; exit 2; }
if [ "$DEVICE" != cpu ]; then  # the image's Python lacks TRL, VADER, gguf and has another transformers
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$KIT"/whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/kit:src:/tmp/site${EXTRA_PATH:+:$EXTRA_PATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
(nvidia-smi || echo "no nvidia-smi") > "$OUT/gpu.txt" 2>&1
"$PY" - > "$OUT/versions.txt" 2>&1 <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("transformers", "trl", "datasets", "accelerate", "tokenizers", "huggingface_hub", "pyarrow"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001 - a report, not a program
        print(name, "FAILS:", type(e).__name__, e)
EOF
cat "$OUT/versions.txt"
"$PY" benchmarks/device_kit.py build "$KIT" /tmp/kit || exit 1
if [ -n "${QUICK:-}" ]; then
  DECODE=(--rows 2 --tokens 8 --repeats 1); STEP=(--shapes 2x2x8 --steps 2)
else
  DECODE=(--rows 16 --tokens 64 --repeats 5); STEP=(--shapes 8x2x24 16x4x64 --steps 7)
fi
POLICY=/tmp/kit/smollm2-135m
timeout "${DECODE_TIMEOUT:-150}" "$PY" benchmarks/bench_decode.py --device "$DEVICE" --policy "$POLICY" "${DECODE[@]}" --json \
  2>&1 | tee "$OUT/decode.log"
timeout "${STEP_TIMEOUT:-300}" "$PY" benchmarks/bench_rl_step.py --device "$DEVICE" --policy "$POLICY" "${STEP[@]}" --json --no-write \
  2>&1 | tee "$OUT/rl_step.log"
