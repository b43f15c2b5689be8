#!/usr/bin/env bash
# Two-dimensional parallelism on one multi-GPU node: T time groups x C context ranks (diffusers' Ulysses / ring
# inside each group, CHORDS across the groups), NCCL. Flux.1-dev at 1024^2 and Wan 2.1 1.3B (480x832, 17 frames),
# real-size random weights, at 1x8, 2x4, 4x2 and 8x1 (every T x C = NPROC). Each run is one
# `torchrun ... hasten sample --executor distributed [--context-parallel SPEC]`; the table lists wall time,
# rounds and the reference's sequential wall time per layout, and the GPU's name.
#
#   benchmarks/gpu_layouts.sh [OUT]                  # default OUT=report-gpu-layouts, NPROC=8
#   HASTEN_GPU_SMOKE=1 benchmarks/gpu_layouts.sh OUT # tiny networks on the CPU with gloo (NPROC=2: 1x2, 2x1)
#   NPROC=4 MODELS=flux-dev benchmarks/gpu_layouts.sh
# Wan 2.1 1.3B has 12 heads: Ulysses-8 cannot split them, so 1x8 runs ulysses=4:ring=2, and ring attention needs
# a backend that returns the log-sum-exp (ATTN_BACKEND, default _native_cudnn; flash works too). Not yet run on GPUs.
set -euo pipefail
OUT=${1:-report-gpu-layouts}
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-"flux-dev wan2.1-1.3b"}
CORES=${CORES:-8}
if [ "${HASTEN_GPU_SMOKE:-0}" = 1 ]; then
  NPROC=${NPROC:-2}; SUFFIX=":tiny"; PLACE="--device cpu --dtype float32 --backend gloo"; STEPS=${STEPS:-6}
  IMAGE="--height 64 --width 64"; VIDEO="--height 32 --width 32 --frames 5"; CORES=${CORES_SMOKE:-2}
  export OMP_NUM_THREADS=1
else
  NPROC=${NPROC:-8}; SUFFIX=""; PLACE="--dtype bfloat16 --backend nccl"; STEPS=${STEPS:-28}
  IMAGE="--height 1024 --width 1024"; VIDEO="--height 480 --width 832 --frames 17"
fi
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt"; fi
degree() {  # degree C HEADS: the --context-parallel spec of C ranks (Ulysses where the heads split, then ring)
  local c=$1 heads=$2
  if [ "$c" = 1 ]; then echo ""; elif [ $((heads % c)) = 0 ]; then echo "ulysses=$c"
  elif [ $((c % 2)) = 0 ] && [ $((heads % (c / 2))) = 0 ]; then echo "ulysses=$((c / 2)):ring=2"
  else echo "ring=$c"; fi
}
port=$((29600 + RANDOM % 300))
for model in $MODELS; do
  case "$model$SUFFIX" in
    flux-dev) heads=24 ;; wan2.1-1.3b) heads=12 ;; *) heads=2 ;;
  esac
  if [ "$model" = "wan2.1-1.3b" ]; then size=$VIDEO; else size=$IMAGE; fi
  for c in $(seq 1 "$NPROC"); do
    [ $((NPROC % c)) = 0 ] || continue
    t=$((NPROC / c)); spec=$(degree "$c" "$heads"); name="$model-${t}x$c"
    attn=""
    if [ "${spec#*ring}" != "$spec" ]; then  # ring attention merges blocks by log-sum-exp: not the native backend
      if [ "${HASTEN_GPU_SMOKE:-0}" = 1 ]; then echo "== $name skipped: $spec needs a CUDA attention backend"; continue; fi
      attn=${ATTN_BACKEND:-_native_cudnn}
    fi
    echo "== $name ${spec:-time parallel only}${attn:+ (DIFFUSERS_ATTN_BACKEND=$attn)}"
    port=$((port + 1))
    ${attn:+env DIFFUSERS_ATTN_BACKEND=$attn} "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --master_addr 127.0.0.1 --master_port "$port" \
      -m hasten sample --model "random:$model$SUFFIX" $PLACE $size --prompt "a photo of a cat" --seed 0 \
      --steps "$STEPS" --method chords --cores "$CORES" --executor distributed \
      ${spec:+--context-parallel "$spec"} --no-progress --json --out "$OUT/$name" > "$OUT/$name.json"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip().splitlines() if (out / "gpu.txt").exists() else ["cpu (smoke)"]
lines = [f"GPUs: {', '.join(sorted(set(gpu)))} x {len(gpu)}" if gpu != ["cpu (smoke)"] else "CPU smoke run",
         "", "| run | context_parallel | ranks | rounds | NFE | wall s | sequential wall s | rmse |", "|---|---|---|---|---|---|---|---|"]
for f in sorted(out.glob("*.json")):
    s = json.loads(f.read_text().strip().splitlines()[-1])
    lines.append(f"| {f.stem} | {s['context_parallel'] or '-'} | {s['world_size']} | {s['rounds']} | {s['nfe']} | "
                 f"{s['wall_s']:.3f} | {s['sequential_wall_s']:.3f} | {s['rmse']:.2e} |")
(out / "layouts.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
