#!/usr/bin/env bash
# The one command a session with a GPU runs: GPU tests of the Triton backend, then the
# benchmark; everything lands in $OUT (default /tmp/embtab_gpu_check). Not part of the
# normal test run. Needs python with torch (CUDA build), triton and numpy; embtab is
# taken from this checkout (PYTHONPATH=src), hypothesis is optional.
#
#   bash benchmarks/gpu_check.sh            # tests (~2 min, mostly compiling) + full benchmark (~3 min)
#   QUICK=1 bash benchmarks/gpu_check.sh    # benchmark shapes / 10
#   BENCH=0 bash benchmarks/gpu_check.sh    # tests only
#
# Exit status: 0 when the tests and the benchmark both succeeded.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/embtab_gpu_check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$ROOT"
unset TRITON_INTERPRET  # compiled kernels, not the interpreter
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
export PYTHONUNBUFFERED=1
# Each part has its own limit, so a hang in one still leaves the other's results.
# Defaults sum to 570 s: the whole script fits one 10-minute device command.
TEST_LIMIT="${TEST_LIMIT:-240}"
BENCH_LIMIT="${BENCH_LIMIT:-330}"

{
  echo "== $(date -u +%FT%TZ) embtab GPU check in $ROOT"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$OUT/env.txt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device; nothing to check" | tee -a "$OUT/env.txt"
  exit 2
fi

# 1. The Triton tests on CUDA tensors (compiled kernels), and every GPU-only test elsewhere
#    (marked cuda: OOV policies, fused optimizers, vectors on the GPU).
timeout "$TEST_LIMIT" "$PY" -m pytest tests/ops $(grep -rl "mark.cuda" tests --include="test_*.py" | grep -v "^tests/ops/") \
  -q -p no:cacheprovider -rs --durations=10 --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.txt"
tests_rc=${PIPESTATUS[0]}

# 2. The benchmark: a Markdown table on stdout, JSON next to it.
bench_rc=0
if [ "${BENCH:-1}" != "0" ]; then
  timeout "$BENCH_LIMIT" "$PY" benchmarks/bench_gpu.py ${QUICK:+--quick} --json "$OUT/bench_gpu.json" 2>"$OUT/bench_gpu.log" | tee "$OUT/bench_gpu.md"
  bench_rc=${PIPESTATUS[0]}
  tail -n 5 "$OUT/bench_gpu.log"
fi
echo "gpu_check.sh: tests rc=$tests_rc, bench rc=$bench_rc; results in $OUT" | tee -a "$OUT/env.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
