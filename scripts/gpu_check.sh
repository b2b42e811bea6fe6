#!/usr/bin/env bash
# make gpu-check: everything a first GPU session should run, in one go, on a machine with one
# H100/H200 whose python has torch (CUDA build), triton and nvcc. Target: under 8 minutes.
#
#   1 env       GPU, driver, torch/triton/nvcc versions
#   2 build     pip install --no-build-isolation --no-deps -e .  (the CUDA extension)
#   3 cuda      make cuda-check (registers, spills)
#   4 tests     the kernel test suite on the GPU (tests/msca_kernels: cuda, triton, shared)
#   5 big       1024x1024 and > 2^31-element cases (scripts/gpu_checks.py big)
#   6 profile   per-kernel table at 512x512, syncs per call (scripts/gpu_checks.py profile)
#   7 bench     make bench-gpu's recipe -> benchmarks/results/<gpu>.md
# Every step's log and result goes to OUT (default out/gpu-check/<gpu>-<time>); a failing step
# is recorded and the next one runs. SUMMARY.md lists the steps. Exit status 1 if any failed.
#
# GPU_CHECK_DRY_RUN=1: CI on a CPU machine. Steps 1-4 and 7 print their commands (checked to
# exist), 5 and 6 run their Python on CPU at tiny sizes, so the script cannot die of a typo.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY="${GPU_CHECK_DRY_RUN:-0}"
PY="${PY:-$(command -v python || command -v python3)}"
export PY
if [ "$DRY" = 1 ]; then
  gpu=dry-run
else
  gpu="$($PY -c "import re, torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(re.sub(r'[^A-Za-z0-9._-]+', '-', torch.cuda.get_device_name()).strip('-'))")" || {
    echo "gpu-check: torch sees no CUDA GPU" >&2; exit 1; }
fi
OUT="${GPU_CHECK_OUT:-out/gpu-check/$gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
summary="$OUT/SUMMARY.md"
echo "# gpu-check on $gpu ($(date -u +%Y-%m-%dT%H:%MZ))" >"$summary"
echo >>"$summary"
echo "| step | result | seconds | log |" >>"$summary"
echo "|---|---|---|---|" >>"$summary"
failed=0

# step NAME LIMIT_S DRY_MODE CMD...: DRY_MODE "run" runs the command in a dry run too, "echo"
# only prints it there (after checking that its program exists).
step() {
  local name="$1" limit="$2" mode="$3"
  shift 3
  local log="$OUT/$name.log" t0 rc
  t0=$(date +%s)
  echo "== gpu-check: $name: $*"
  if [ "$DRY" = 1 ] && [ "$mode" = echo ]; then
    if command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; then rc=0; else rc=127; fi
    echo "(dry run) $*" >"$log"
  else
    # a dry run shares a CI machine: its limits are generous, the GPU run's are the budget
    [ "$DRY" = 1 ] && limit=$((limit * 10))
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
  fi
  local dt=$(($(date +%s) - t0)) res=ok
  if [ $rc -ne 0 ]; then res="FAILED (exit $rc)"; failed=1; tail -n 30 "$log" >&2; fi
  echo "| $name | $res | $dt | $name.log |" >>"$summary"
  echo "   $res in ${dt}s"
}

env_info() {
  nvidia-smi || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_properties(0))"
  nvcc --version || true
}

export -f env_info
step env 60 run bash -c env_info
step build 240 echo $PY -m pip install --no-build-isolation --no-deps -e .
step cuda 120 echo bash csrc/cuda/check.sh
step tests 180 echo $PY -m pytest -q tests/msca_kernels -p no:cacheprovider
dry_flag=()
[ "$DRY" = 1 ] && dry_flag=(--dry-run)
step big 120 run $PY scripts/gpu_checks.py big "$OUT" "${dry_flag[@]}"
step profile 60 run $PY scripts/gpu_checks.py profile "$OUT" "${dry_flag[@]}"
# make bench-gpu's recipe with this python (the make target would set up its own .venv)
bench_gpu() {
  $PY -m pytest benchmarks/test_bench_gpu.py --benchmark-json="benchmarks/results/$gpu.json" -q &&
    $PY -m benchmarks.report "benchmarks/results/$gpu.json" "benchmarks/results/$gpu.md"
}
export -f bench_gpu
export gpu
step bench 240 echo bash -c bench_gpu
if [ "$DRY" != 1 ] && ls benchmarks/results/"$gpu".md >/dev/null 2>&1; then
  cp benchmarks/results/"$gpu".md benchmarks/results/"$gpu".json "$OUT"/ 2>/dev/null || true
fi
echo >>"$summary"
echo "Logs and tables: $OUT" >>"$summary"
cat "$summary"
exit $failed
