#!/usr/bin/env bash
# GPU readiness in one go: the parity suite with jaxcnn on the accelerator, then `jaxcnn bench`
# (28-px and 224-px models, jaxcnn against torch eager and torch.compile) and the whole-process
# comparison; every result lands in OUT_DIR.
#
#   scripts/gpu-check.sh OUT_DIR            # on a GPU machine (about 8 minutes on one H200)
#   JAX_PLATFORMS=cpu scripts/gpu-check.sh OUT_DIR --small   # the same steps, small, on CPU
#
# Parity runs in float32 with JAX matmul precision 'highest' and TF32 off (parity_tests'
# conftest sets both; NVIDIA_TF32_OVERRIDE=0 covers cuBLAS too); the torch reference side of the
# parity tests stays on the CPU, so the GPU results are checked against CPU torch. The bench
# runs torch on CUDA when JAX runs on the GPU. bfloat16: one `jaxcnn train --precision bfloat16`
# epoch beside a float32 one (the bench itself times float32). Uses the current Python
# environment (PYTHON, default: .venv/bin/python if present, else python3); installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/gpu-check.sh OUT_DIR [--small]}
small=${2:-}
mkdir -p "$out"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export NVIDIA_TF32_OVERRIDE=0
status=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record the exit status
    local name=$1; shift
    local start=$SECONDS
    echo "[gpu-check] $name: $*"
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" >> "$out/summary.txt"
    echo "[gpu-check] $name: exit $rc in $((SECONDS - start)) s"
    [ $rc -eq 0 ] || status=1
}

: > "$out/summary.txt"
step devices "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); \
print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"

if [ "$small" = "--small" ]; then
    step parity "$PY" -m pytest -q -p no:cacheprovider parity_tests/test_parity_core.py \
        -k "eval_outputs and lenet and not bn"
    step bench "$PY" -m jaxcnn bench --models lenet --steps 1 --repeats 1 --no-compile \
        --no-epoch --json "$out/bench-28px.json"
    step train-bf16 "$PY" -m jaxcnn train --preset lenet_bn --epochs 1 --limit-train 256 \
        --limit-test 256 --precision bfloat16
else
    step parity "$PY" -m pytest -q -p no:cacheprovider parity_tests/test_parity_core.py \
        parity_tests/test_layers.py
    step bench-28px "$PY" -m jaxcnn bench --models lenet lenet_bn --repeats 5 \
        --json "$out/bench-28px.json"
    step bench-224px "$PY" -m jaxcnn bench --models alexnet vgg11 nin resnet18 --repeats 3 \
        --no-epoch --json "$out/bench-224px.json"
    step e2e "$PY" -m jaxcnn bench --e2e --presets lenet lenet_bn --json "$out/e2e.json"
    step train-f32 "$PY" -m jaxcnn train --preset lenet_bn --epochs 2
    step train-bf16 "$PY" -m jaxcnn train --preset lenet_bn --epochs 2 --precision bfloat16
fi
echo "[gpu-check] results in $out (summary.txt)"
exit $status
