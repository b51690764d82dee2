#!/usr/bin/env bash
# tests/gpu/run.sh -- the CUDA refresher gives bit-identical output to the
# CPU refresher on the same snapshot (issue 5).
#
# Builds iqp --with-cuda in its own directory ($IQP_GPU_BUILD, default
# _build_gpu, or _build_gpu_emu when emulating), generates traffic (iqp gen), backfills a store, and runs
# `iqp refresh --dump` with --backend cpu and --backend cuda at two as-of
# times an hourly bucket apart and with three parameter sets (smoothing,
# K, ranking measure, a K larger than any context), then compares each pair
# of dumps (by SHA-256 of the streamed dump; a mismatch is re-run to files
# and the first differing lines shown). The data makes sort segments of
# every size CUB distinguishes: 6000 items, the gender contexts hold
# nearly all of them.
#
# Without a GPU it prints "SKIP: no GPU ..." and exits 77 (automake's skip
# status). IQP_CUDA_EMULATE=1 builds --with-cuda=emulate instead (the same
# device code run in host loops, no GPU needed; checks indexing and
# arithmetic, not the CUDA runtime or CUB). Exit 0: all identical; 1: a
# difference (the first differing lines are shown) or a failed step.
set -euo pipefail
self=$(realpath "$0")
root=$(dirname "$(dirname "$(dirname "$self")")")
cd "$root"
mode=--with-cuda
if [[ ${IQP_CUDA_EMULATE:-0} == 1 ]]; then
  mode=--with-cuda=emulate
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "SKIP: no GPU (nvidia-smi is missing or lists no device)"
  exit 77
fi
default_build=$root/_build_gpu
[[ $mode == --with-cuda ]] || default_build=$root/_build_gpu_emu
build=${IQP_GPU_BUILD:-$default_build}
jobs=$(nproc)
[[ -x configure ]] || autoreconf -fi >/dev/null
mkdir -p "$build"
if [[ ! -f $build/Makefile ]]; then
  (cd "$build" && "$root/configure" "$mode" --enable-werror CFLAGS='-O2 -g' >configure.out 2>&1) ||
    { tail -n 30 "$build/configure.out"; echo "FAIL: configure $mode"; exit 1; }
fi
make -C "$build" -j"$jobs" iqp >"$build/make.out" 2>&1 || { tail -n 40 "$build/make.out"; echo "FAIL: build"; exit 1; }
iqp=$build/iqp
work=$(mktemp -d "${TMPDIR:-/tmp}/iqp-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=1717996834567 # 2024-06-10, not on a bucket edge
"$iqp" gen --seed 7 --impressions 6000 --queries 300 --items 6000 --items-per-impression 10 \
  --span 30h --start "$start" --out "$work/a.jsonl" 2>/dev/null
"$iqp" gen --seed 8 --impressions 500 --queries 300 --items 6000 --span 2h \
  --start $((start - 6 * 86400000)) --out "$work/old.jsonl" 2>/dev/null
"$iqp" backfill --store "$work/store" --quiet "$work/old.jsonl" "$work/a.jsonl" 2>/dev/null
wm=$(( start + 30 * 3600000 + 180000 ))            # after every event (gen: ts < start+span+180s)
as_ofs=("$wm" $(( (wm / 3600000 + 1) * 3600000 )))  # the next hourly bucket: the 1d window slides

if ! err=$("$iqp" refresh --store "$work/store" --as-of "$wm" --backend cuda --top-k 1 --quiet 2>&1); then
  if [[ $err == *"no usable CUDA device"* || $err == *"no CUDA device"* || $err == *"cannot be used"* ]]; then
    echo "SKIP: no GPU ($err)"
    exit 77
  fi
  echo "FAIL: $err"
  exit 1
fi

params=("" "--smoothing 0 --top-k 5 --rank-measure click" "--smoothing 3.25 --top-k 10000 --rank-measure impression")
# dump_sum BACKEND AS_OF PARAMS: the SHA-256 of the dump (summary line to $work/BACKEND.err)
dump_sum() {
  local extra=()
  [[ $1 == cuda ]] && extra=(--backend cuda) || extra=(--threads "$jobs")
  # shellcheck disable=SC2086
  "$iqp" refresh --store "$work/store" --as-of "$2" --quiet "${extra[@]}" $3 --dump - 2>"$work/$1.err" |
    sha256sum | cut -d' ' -f1
}
fail=0 n=0
for t in "${as_ofs[@]}"; do
  for p in "${params[@]}"; do
    n=$((n + 1))
    a=$(dump_sum cpu "$t" "$p") b=$(dump_sum cuda "$t" "$p")
    if [[ $a == "$b" ]]; then
      printf 'ok   as_of %s %-55s %s\n' "$t" "${p:-(defaults)}" "$(grep -o 'compute cuda.*' "$work/cuda.err" | head -c 110)"
    else
      fail=1
      printf 'DIFF as_of %s %s\n' "$t" "${p:-(defaults)}"
      cat "$work/cuda.err"
      # shellcheck disable=SC2086
      "$iqp" refresh --store "$work/store" --as-of "$t" --quiet $p --dump "$work/cpu.txt" 2>/dev/null || true
      # shellcheck disable=SC2086
      "$iqp" refresh --store "$work/store" --as-of "$t" --quiet --backend cuda $p --dump "$work/cuda.txt" 2>/dev/null || true
      diff "$work/cpu.txt" "$work/cuda.txt" | head -n 10 || true
    fi
  done
done
if ((fail)); then echo "FAIL: CUDA and CPU dumps differ"; exit 1; fi
echo "PASS: $n CUDA dumps identical to the CPU's ($mode)"
