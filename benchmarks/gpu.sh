#!/usr/bin/env bash
# Real-size networks with random weights on one GPU: sequential vs CHORDS (K = 4, 8, batched on the one GPU),
# ParaSolver-Turbo and AB-Cache, at 256^2, 512^2 and 1024^2 (Flux.1-dev, SD3.5-medium) and one video size
# (Wan 2.1 1.3B). Timing is by CUDA events after an untimed warm-up forward per run; the tables also give peak
# GPU memory. Finishes in under 10 minutes on one H100.
#
#   benchmarks/gpu.sh [OUT]                  # default OUT=report-gpu; then: python benchmarks/gpu_table.py OUT
#   HASTEN_GPU_SMOKE=1 benchmarks/gpu.sh OUT # the same commands with tiny networks on the CPU (CI smoke test)
#   MODELS="flux-dev" SIZES="512" benchmarks/gpu.sh   # a subset
#   COMPILE=1 benchmarks/gpu.sh              # add one torch.compile run (padded rounds, graphs counted)
#   RACE=0 benchmarks/gpu.sh                 # leave out the race (hasten bench --race, issue 26) on Flux
set -euo pipefail
OUT=${1:-report-gpu}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-"flux-dev sd3.5-medium wan2.1-1.3b"}
STEPS=${STEPS:-28}
if [ "${HASTEN_GPU_SMOKE:-0}" = 1 ]; then
  SUFFIX=":tiny"; PLACE="--device cpu --dtype float32"; SIZES=${SIZES:-"64"}; VIDEO="--height 32 --width 32 --frames 5"
  STEPS=${STEPS_SMOKE:-10}
else
  SUFFIX=""; PLACE="--device cuda --dtype bfloat16"; SIZES=${SIZES:-"256 512 1024"}
  VIDEO="--height 480 --width 832 --frames 17"
fi
mkdir -p "$OUT"
bench() {  # bench NAME ARGS...: one hasten bench run into $OUT/NAME
  local name=$1; shift
  echo "== $name"
  "$PYTHON" -m hasten bench $PLACE --prompt "a photo of a cat" --batch 1 --seed 0 --steps "$STEPS" --until-stop \
    --no-progress --out "$OUT/$name" "$@"
}
METHODS="sequential,chords,parasolver-turbo:rho=8"
for model in $MODELS; do
  if [ "$model" = "wan2.1-1.3b" ]; then
    bench "$model-video" --model "random:$model$SUFFIX" $VIDEO --methods "$METHODS" --cores 4,8
    continue
  fi
  for size in $SIZES; do
    bench "$model-$size" --model "random:$model$SUFFIX" --height "$size" --width "$size" --methods "$METHODS" --cores 4,8
  done
  largest=${SIZES##* }
  bench "$model-$largest-abcache" --model "random:$model$SUFFIX" --height "$largest" --width "$largest" \
    --methods sequential --caches none,abcache:2:interval=2
done
if [ "${COMPILE:-0}" = 1 ]; then
  model=${MODELS%% *}; size=${SIZES%% *}
  bench "$model-$size-compile" --model "random:$model$SUFFIX" --height "$size" --width "$size" \
    --methods sequential,chords --cores 4 --compile
fi
if [ "${RACE:-1}" = 1 ]; then
  # The race on the real-size Flux at the largest size. Random weights: only fixed schedules' wall speedups
  # count (a threshold's or a tolerance's decisions depend on the samples, which are noise here), so the field
  # is the fixed-schedule entrants; quality columns are not meaningful on random weights.
  largest=${SIZES##* }
  RACE_FIELD="hasten:sequential,hasten:reuse:interval=2,hasten:abcache:2:interval=2,hasten:abcache:2:interval=3"
  RACE_FIELD+=",hasten:abcache:3:interval=3,hasten:abcache:2:interval=4,hasten:abcache:4:interval=4"
  RACE_FIELD+=",diffusers:taylorseer,diffusers:taylorseer:cache_interval=3:max_order=2"
  RACE_FIELD+=",diffusers:pab:spatial_attention_block_skip_range=2,diffusers:fastercache"
  echo "== flux-dev-$largest-race"
  "$PYTHON" -m hasten bench --race $PLACE --model "random:flux-dev$SUFFIX" --prompt "a photo of a cat" \
    --height "$largest" --width "$largest" --batch 1 --seed 0 --steps "$STEPS" --repeats 3 --no-progress \
    --race-entrants "$RACE_FIELD" --out "$OUT/flux-dev-$largest-race"
fi
"$PYTHON" "$(dirname "$0")/gpu_table.py" "$OUT"
