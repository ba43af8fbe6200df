#!/usr/bin/env bash
# The CUDA parity tests on the emulated device with a sanitizer compiled into the kernels:
#   thread:  races between the CUDA threads of a block (each fiber is a ThreadSanitizer thread, ordered
#            only by __syncthreads and __shfl_xor_sync), e.g. a missing __syncthreads;
#   address: out-of-bounds reads and writes of device buffers, stack overflows of a kernel thread.
# Usage: scripts/emu-sanitize.sh thread|address [test-name filter]
# The sanitizer's runtime is preloaded into the test binary, which is not instrumented (so only the
# kernels and the launcher are checked).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: scripts/emu-sanitize.sh thread|address [filter]}"
shift
case "$kind" in
  thread) lib=libtsan.so ;;
  address) lib=libasan.so ;;
  *) echo "expected thread or address, got $kind" >&2; exit 2 ;;
esac
rt="$(${CXX:-c++} -print-file-name=$lib)"
[ -e "$rt" ] || { echo "no $lib for ${CXX:-c++} (install the compiler's sanitizer runtime)" >&2; exit 2; }
bin="$(cargo test --release --test cuda_parity --no-run --message-format=json 2>/dev/null \
  | grep '"name":"cuda_parity"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
[ -x "$bin" ] || { echo "could not build the cuda_parity test binary" >&2; exit 1; }
export SCSPECIES_CUDA_EMULATE=1 SCSPECIES_EMU_SANITIZE="$kind"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}" TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 ignore_noninstrumented_modules=1 allocator_may_return_null=1}"
# TSan needs the address-space layout it expects: without randomisation it always gets it.
run=(env LD_PRELOAD="$rt" "$bin" --test-threads 1 "$@")
if [ "$kind" = thread ] && command -v setarch >/dev/null; then run=(setarch "$(uname -m)" -R "${run[@]}"); fi
"${run[@]}"
