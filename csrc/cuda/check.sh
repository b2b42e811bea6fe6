#!/usr/bin/env bash
# make cuda-check: compiles every raw CUDA kernel file (csrc/cuda/*.cu, which need nothing but
# the CUDA toolkit) for sm_80 and sm_90 with `-Xptxas -v`, prints the registers of every
# kernel, and fails on any compile error or any register spill. Also checks that the launcher
# headers (csrc/cuda/*.h) compile as plain host C++, as the torch bindings include them.
# Needs no GPU. NVCC overrides the compiler, CUDA_CHECK_ARCHS the architectures.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ]; then
  echo "cuda-check: nvcc not found" >&2
  exit 1
fi
ARCHS="${CUDA_CHECK_ARCHS:-80 90}"
# The same device flags as setup.py's CUDAExtension.
FLAGS=(-O3 --use_fast_math -std=c++17 -lineinfo -Xptxas -v)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob
sources=("$here"/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "cuda-check: no .cu files in $here" >&2
  exit 1
fi

# One nvcc per (file, arch), two at a time (CI machines have few cores).
jobs=()
for src in "${sources[@]}"; do
  for arch in $ARCHS; do
    jobs+=("$src:$arch")
  done
done
pids=()
run_one() {
  local src="${1%:*}" arch="${1##*:}"
  local log="$tmp/$(basename "$src" .cu).sm_$arch.log"
  if "$NVCC" "${FLAGS[@]}" -gencode "arch=compute_$arch,code=sm_$arch" -c "$src" \
      -o "$tmp/$(basename "$src" .cu).sm_$arch.o" >"$log" 2>&1; then
    echo ok >"$log.status"
  else
    echo fail >"$log.status"
  fi
}
i=0
for job in "${jobs[@]}"; do
  run_one "$job" &
  pids+=($!)
  i=$((i + 1))
  if [ $((i % 2)) -eq 0 ]; then
    wait "${pids[@]}"
    pids=()
  fi
done
if [ ${#pids[@]} -gt 0 ]; then wait "${pids[@]}"; fi

status=0
demangle() { if command -v c++filt >/dev/null 2>&1; then c++filt; else cat; fi; }
for log in "$tmp"/*.log; do
  name="$(basename "$log" .log)"
  if [ "$(cat "$log.status")" != ok ]; then
    echo "cuda-check: FAILED to compile $name:" >&2
    grep -v '^ptxas info' "$log" >&2 || true
    status=1
    continue
  fi
  # ptxas prints, per kernel: "Compiling entry function 'NAME' for 'sm_XX'", then a line with
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers".
  report="$(awk '
    /Compiling entry function/ { match($0, /'\''[^'\'']*'\''/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes spill stores/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "spill") sp += $i } ; spill[fn] = sp; sp = 0 }
    /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") r = $(i+1); printf "%s\t%s\t%d\n", r, fn, spill[fn] }
  ' "$log")"
  echo "== $name: registers, spilled bytes, kernel"
  while IFS=$'\t' read -r regs fn spilled; do
    [ -z "$regs" ] && continue
    short="$(echo "$fn" | demangle | sed -E 's/msca_cuda::\(anonymous namespace\):://; s/\(.*//')"
    printf '  %4s regs  %4s spill  %s\n' "$regs" "$spilled" "$short"
    if [ "$spilled" -gt 0 ]; then
      echo "cuda-check: register spill in $short ($name)" >&2
      status=1
    fi
  done <<<"$report"
  if grep -qi 'warning' "$log"; then
    echo "cuda-check: warnings in $name:" >&2
    grep -i 'warning' "$log" >&2
  fi
done

# Host view of the launcher headers: what the torch bindings see through the host compiler
# (nvcc -x c++ hands a .cpp to the host compiler with the CUDA include path).
for h in "$here"/*.h; do
  echo "#include \"$h\"" >"$tmp/host.cpp"
  if ! "$NVCC" -std=c++17 -x c++ -c "$tmp/host.cpp" -o "$tmp/host.o" 2>"$tmp/host.err"; then
    echo "cuda-check: $(basename "$h") does not compile as host C++:" >&2
    cat "$tmp/host.err" >&2
    status=1
  fi
done

# Link a host program against the kernels of the first architecture: every launcher the
# bindings call must resolve to an explicit instantiation. It is run too (it launches nothing).
first_arch="${ARCHS%% *}"
if [ $status -eq 0 ] && [ -f "$here/link_check.cpp" ]; then
  if "$NVCC" -std=c++17 -x c++ -c "$here/link_check.cpp" -o "$tmp/link_check.o" 2>"$tmp/link.err" &&
     "$NVCC" -o "$tmp/link_check" "$tmp/link_check.o" "$tmp"/*.sm_"$first_arch".o 2>>"$tmp/link.err"; then
    "$tmp/link_check" || { echo "cuda-check: link_check failed" >&2; status=1; }
  else
    echo "cuda-check: launchers do not link:" >&2
    cat "$tmp/link.err" >&2
    status=1
  fi
fi

if [ $status -eq 0 ]; then echo "cuda-check: OK (${#sources[@]} files x archs $ARCHS, no spills)"; fi
exit $status
