#!/bin/sh
# The GPU measurements of the speed goals in one go, for a machine with one CUDA GPU and
# torch (about 8 minutes on an H100 or H200): operation counts, training-step time of each
# normalization relative to BN in eager mode, compiled, and compiled with CUDA graphs
# (goal: analytic <= 1.10x BN at width 1, batch 32, compiled against compiled).
#
#     OUT=results-dir sh benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd benchmarks
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" 2>&1
timeout 60 python3 op_counts.py > "$OUT/op_counts.md" 2>&1
timeout 120 python3 norm_speed.py --device cuda --widths 1 0.333 --batches 32 256 \
  > "$OUT/norm_speed_eager.md" 2> "$OUT/norm_speed_eager.err"
timeout 150 python3 norm_speed.py --device cuda --widths 1 --batches 32 --compiled \
  > "$OUT/norm_speed_compiled.md" 2> "$OUT/norm_speed_compiled.err"
timeout 150 python3 norm_speed.py --device cuda --widths 1 --batches 32 --compiled reduce-overhead \
  > "$OUT/norm_speed_cudagraphs.md" 2> "$OUT/norm_speed_cudagraphs.err"
