#!/usr/bin/env bash
# The one-shot GPU check. GPU time comes in short slots, so everything is built beforehand on a CPU
# machine and this runs as one prepared command on the GPU machine (no internet, no Rust there).
#
#   scripts/gpu-check.sh build   here: stripped release binaries (the CLI and the CUDA parity tests)
#                                into gpu-check/bin, well under the 64 MiB a device call may carry.
#   scripts/gpu-check.sh run     there, in the repo root, with gpu-check/ carried:
#     1. the CUDA parity and bf16 tests with SCSPECIES_REQUIRE_GPU=1 (a missing GPU fails; nothing skips);
#     2. demo --device cuda, then the same demo on that machine's CPU: both balanced accuracies;
#     3. bench --device cuda.
#   Each step has its own time limit; all of it ends within 8 minutes. The log and the runs' JSON go
#   to $OUT (the device tool's output folder) or else gpu-check/out.
#
# The CUDA libraries are loaded at run time: libcuda from the driver, libnvrtc and libcublas from
# wherever the machine has them (CUDA toolkit or the nvidia-* Python wheels); they are searched for.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=gpu-check

build() {
  set -e
  mkdir -p "$dir/bin"
  cargo build --release --bin scspecies
  cp target/release/scspecies "$dir/bin/scspecies"
  local t test_bin
  for t in cuda_parity cuda_bf16; do
    test_bin="$(cargo test --release --test $t --no-run --message-format=json 2>/dev/null \
      | grep "\"name\":\"$t\"" | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
    cp "$test_bin" "$dir/bin/$t"
  done
  strip "$dir/bin/scspecies" "$dir/bin/cuda_parity" "$dir/bin/cuda_bf16"
  du -sh "$dir/bin"/*
  echo "carry gpu-check (and run: bash scripts/gpu-check.sh run)"
}

# Folders holding libnvrtc.so.13 and libcublas.so.13 on this machine.
cuda_lib_dirs() {
  find /usr/local /opt /usr/lib /usr/lib64 -xdev \( -name 'libnvrtc.so.13' -o -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \) \
    2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:
}

step() { # name, seconds, command...
  local name="$1" secs="$2"
  shift 2
  echo "== $name (limit ${secs} s)"
  local t0=$SECONDS
  timeout "$secs" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  return $rc
}

ba() { python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['balanced_accuracy']['latent_transfer'])" "$1" 2>/dev/null || echo "?"; }

run() {
  local out="${OUT:-$dir/out}"
  mkdir -p "$out"
  exec > >(tee "$out/gpu-check.log") 2>&1
  [ -x "$dir/bin/scspecies" ] && [ -x "$dir/bin/cuda_parity" ] || { echo "no binaries in $dir/bin: run 'scripts/gpu-check.sh build' on the CPU machine first"; exit 2; }
  local libs
  libs="$(cuda_lib_dirs)"
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "CUDA libraries from: ${libs:-none found}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  lscpu | grep -m1 'Model name' || true
  local status=0
  # Limits: 150 + 20 + 90 + 60 + 150 s = 7 min 50 s at most.
  SCSPECIES_REQUIRE_GPU=1 step "CUDA parity tests" 150 "$dir/bin/cuda_parity" --nocapture --test-threads 1 || status=1
  SCSPECIES_REQUIRE_GPU=1 step "bf16 tensor-core GEMMs" 20 "$dir/bin/cuda_bf16" --nocapture || status=1
  step "demo --device cuda" 90 "$dir/bin/scspecies" demo --data data/baron-pancreas --device cuda --quiet --out "$out/demo-cuda" || status=1
  step "bench --device cuda" 60 "$dir/bin/scspecies" bench --data data/baron-pancreas --device cuda --repeat 2 --out "$out/bench-cuda.json" || status=1
  step "demo on this machine's CPU (same seed)" 150 "$dir/bin/scspecies" demo --data data/baron-pancreas --device cpu --quiet --out "$out/demo-cpu" || status=1
  for r in demo-cuda demo-cpu; do
    [ -f "$out/$r/metrics.json" ] && cp "$out/$r/metrics.json" "$out/$r-metrics.json"
  done
  echo "balanced accuracy: GPU $(ba "$out/demo-cuda/metrics.json"), CPU $(ba "$out/demo-cpu/metrics.json")"
  [ -f "$out/bench-cuda.json" ] && cat "$out/bench-cuda.json"
  echo "gpu-check: $([ $status = 0 ] && echo passed || echo FAILED)"
  exit $status
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh build|run" >&2; exit 2 ;;
esac
