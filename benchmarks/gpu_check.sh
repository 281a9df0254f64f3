#!/usr/bin/env bash
# The GPU checks in one run (issue: GPU clients), for the device machine:
#   run with carry [".whl"], command: bash benchmarks/gpu_check.sh
# Installs the carried wheels (benchmarks/gpu_wheels.sh) beside the machine's CUDA torch,
# then runs the cuda-marked tests, the end-to-end files, DP-SGD / HE / compression /
# calibration / federated-evaluation simulations on the GPU and benchmarks/gpu.py.
# Every step has a timeout and appends its log to $OUT/gpu_check.log as it goes. Carry the
# data too (with /.gpudata/ in .git/info/exclude), carry [".whl", ".gpudata"]:
#   mkdir -p .gpudata/modelnet10 && cp -r ../shared/data/mnist.npz ../shared/data/medmnist .gpudata/
#   cp ../shared/data/modelnet10/modelnet10_1024_small.npz .gpudata/modelnet10/
#   ln -s modelnet10_1024_small.npz .gpudata/modelnet10/modelnet10_1024.npz
# SKIP_INSTALL=1 uses the current environment (to try the script on a CPU machine);
# QUICK=1 shortens every step (digits, 2 rounds).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 CI=true
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/install.log" 2>&1 || { echo "install failed"; exit 1; }
  mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fedloom  # the repository root is the package
  export PYTHONPATH=/tmp/site:/tmp/pkg PATH=/tmp/site/bin:$PATH
fi
python3 -c "import torch, flwr, ray, opacus, tenseal, fedloom; print(torch.__version__, torch.cuda.is_available())" \
  > "$OUT/env.log" 2>&1 || { cat "$OUT/env.log"; exit 1; }
cat "$OUT/env.log"
# ../shared does not travel to the device: carry a copy of the data in .gpudata/ (git-ignored).
DATA=${DATA_DIR:-$( [ -d .gpudata ] && echo "$PWD/.gpudata" || echo ../shared/data )}
RUNS=$(mktemp -d)
export FEDLOOM_DATA=$DATA  # where the tests look for the data sets
status=0
LOG="$OUT/gpu_check.log"  # one file: $OUT returns at most 8
step() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" >> "$LOG"; timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?; echo "== $name: exit $rc" | tee -a "$LOG"; [ $rc -eq 0 ] || status=1
}
if [ "${QUICK:-0}" = 1 ]; then
  SIM=(--task digits --num-clients 4 --rounds 2)
else
  SIM=(--task mnist --data-dir "$DATA" --num-clients 10 --rounds 3 --run-config "mnist-model=\"dp-cnn\"")
fi
step cuda_tests 300 python3 -m pytest -q -m cuda -p no:cacheprovider
for feature in "dp --dp sample --dp-noise 1.0" "he --he" "compression --compression topk:0.1+qsgd:8" \
               "fedeval --run-config fraction-evaluate=1.0"; do
  set -- $feature; name=$1; shift
  step "sim_$name" 300 python3 run_sim.py "${SIM[@]}" "$@" --run-dir "$RUNS/$name"
done
if [ "${QUICK:-0}" = 1 ]; then PC="num-points=128 model-width=0.125"; else PC="num-points=256"; fi
step sim_calibration 300 python3 run_sim.py --task pointcloud --dataset modelnet10 --data-dir "$DATA/modelnet10" \
  --num-clients 4 --rounds 2 --run-config "pointnet-norm=\"batch\" $PC" --run-dir "$RUNS/calibration"
[ "${SKIP_E2E:-0}" = 1 ] || step e2e 600 python3 -m pytest -q -x -m e2e -p no:cacheprovider tests/e2e/test_e2e.py tests/e2e/test_dp_e2e.py \
  tests/e2e/test_he_e2e.py tests/e2e/test_compression_e2e.py tests/e2e/test_task_features_e2e.py
if [ "${QUICK:-0}" = 1 ]; then
  step gpu_bench 300 python3 benchmarks/gpu.py --dry-run --rounds 2 --share-rounds 2 --per-gpu 1 4
else
  step gpu_bench 600 python3 benchmarks/gpu.py --data-dir "$DATA" --rounds 25 --share-rounds 3
fi
cp benchmarks/results/gpu*.md "$OUT/" 2>/dev/null
exit $status
