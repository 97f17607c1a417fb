#!/usr/bin/env bash
# The GPU check (issue 14) for a bare GPU machine with no network that has PyTorch (CUDA), Triton and Lightning
# but not every other dependency. Two stages, so that a first short call finds what breaks before the long one:
#
#   bash engine/gpu/gpu_check.sh --prepare   # here, once: wheels + an 800x600 copy of the DTU scan into .gpu/
#   bash engine/gpu/gpu_check.sh smoke       # there: CUDA tests and a few hundred steps of every GPU path (~3 min)
#   bash engine/gpu/gpu_check.sh full        # there: the figures (fast, quality, samplers, CUDA graphs, texture)
#
# Results land in $OUT (results.jsonl and logs). Each run is capped by `timeout` and by what is left of the stage's
# deadline (GPU_CHECK_SECONDS), so a stage always ends in time. Every bench gets an empty torch.compile cache, so
# each figure includes the compile time a user's first run pays. Copy the JSON lines into engine/BENCHMARKS.md with
# the device, date and commit they carry.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--prepare" ]; then
  set -e
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  rm -rf .gpu/whl && mkdir -p .gpu/whl
  # The versions this checkout's .venv runs (numpy and scipy are on the GPU image already). pycolmap (38 MB) does not
  # fit beside the scan under the 64 MiB transfer limit, so `engine solve` is not timed there.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl omegaconf==2.4.0 PyMCubes==0.1.6 trimesh==5.2.0 xatlas==0.0.11 \
    fast_simplification==0.2.0 nerfacc==0.5.3
  [ -d .gpu/dtu65_800 ] || .venv/bin/python -m datasets.downscale ../shared/data/dtu_scan65 .gpu/dtu65_800 --factor 2
  rm -f .gpu/dtu65_800/cameras_large.npz .gpu/dtu65_800/cameras_linear_init.npz
  # The GPU machine gets a copy of the working tree without .git: record the commit it is running.
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.gpu' || echo -dirty)" > .gpu/commit.txt
  du -sh .gpu
  exit 0
fi

STAGE="${1:-full}"
OUT="${OUT:-/tmp/gpu_check}"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-420}))
# cap N: N seconds, or what is left before the deadline if that is less (never 0: timeout 0 means no limit).
cap() { local left=$((DEADLINE - SECONDS)); echo $(( left < 1 ? 1 : (left < $1 ? left : $1) )); }
left() { echo $((DEADLINE - SECONDS)); }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  touch /tmp/site/.installed
fi
export PYTHONPATH="/tmp/site:$PWD"
NEUS_COMMIT="$(cat .gpu/commit.txt 2>/dev/null || echo unknown)"
export NEUS_COMMIT
SCENE=.gpu/dtu65_800
RESULTS="$OUT/results.jsonl"
NOACC="--set accel.tcnn=false --set accel.nerfacc=false"
# nerfacc's CUDA extension is built once per machine (JIT), for this GPU's architecture only.
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=16
TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)"
export TORCH_CUDA_ARCH_LIST

# bench NAME CAP ARGS...: one engine.bench run with a cold compile cache; its stderr goes to $OUT/NAME.err.
bench() {
  local name=$1 limit; limit=$(cap "$2"); shift 2
  if [ "$limit" -lt 15 ]; then echo "SKIP $name: $(left) s left"; return; fi
  local cache; cache=$(mktemp -d)
  echo "== $name (cap ${limit}s)"
  TORCH_LOGS=recompiles TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton \
    timeout -k 5 "$limit" python3 -m engine.bench "$SCENE" --results "$RESULTS" --events "$OUT/$name.events" "$@" \
    2> "$OUT/$name.err" \
    && echo "OK $name" || { echo "FAIL $name (rc $?)"; grep -v Warning "$OUT/$name.err" | tail -8; }
  grep -h "torch.compile failed" "$OUT/$name.err" | head -3
  tail -1 "$OUT/$name.events" 2>/dev/null | cut -c1-300  # how far it got
}

if [ "$STAGE" = "smoke" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
  echo "$NEUS_COMMIT" | tee "$OUT/commit.txt"
  python3 -c "import torch, lightning, numpy; print('torch', torch.__version__, 'lightning', lightning.__version__, 'numpy', numpy.__version__)"
  python3 -m engine doctor --json > "$OUT/doctor.json" 2>&1 || tail -5 "$OUT/doctor.json"
  # nerfacc's JIT build on the CPU cores, beside the GPU smoke (its timing is not a figure).
  ( timeout 200 python3 -c "import time; t=time.time(); from nerfacc.cuda._backend import _C; print('nerfacc build', round(time.time()-t,1), 's', _C is not None)" \
      > "$OUT/nerfacc_build.txt" 2>&1 ) &
  NERFACC_PID=$!
  timeout "$(cap 90)" python3 -m pytest -q -p no:cacheprovider -k "not nerfacc" tests/test_engine_accel.py \
    tests/test_engine_render.py tests/test_engine_static_sampler.py 2>&1 | tail -12 | tee "$OUT/pytest.txt"
  SHORT="--set export.resolution=128 --holdout 8"
  bench smoke_packed 80 --preset fast --steps 300 $NOACC $SHORT --out /tmp/runs/smoke_packed
  bench smoke_static_graphs 70 --preset fast --steps 300 --no-phase-timer $NOACC $SHORT \
    --set model.sampler=static --set train.cuda_graphs=true
  if [ -d /tmp/runs/smoke_packed ]; then
    echo "== texture export on the GPU (cap $(cap 40)s)"
    ( time timeout -k 5 "$(cap 40)" python3 -m engine export /tmp/runs/smoke_packed --texture --texture-size 1024 \
        --progress none ) > "$OUT/smoke_texture.txt" 2>&1 && echo "OK texture" || { echo "FAIL texture"; tail -8 "$OUT/smoke_texture.txt"; }
  fi
  wait "$NERFACC_PID"; tail -3 "$OUT/nerfacc_build.txt"
  timeout "$(cap 30)" python3 -m pytest -q -p no:cacheprovider -k nerfacc tests/test_engine_accel.py 2>&1 | tail -3
  [ -s "$RESULTS" ] && python3 - "$RESULTS" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r.get(k) for k in ("overrides", "steps", "train_s", "extract_s", "steps_per_s", "mean_samples_per_step",
                                 "peak_gpu_memory_gb", "heldout_psnr", "mask_iou")})
EOF
  exit 0
fi

# full: the figures, most important first. fast: a usable mesh in <= 60 s; quality: 20k steps + 512^3 in <= 3 min.
# No per-phase timer: it syncs the device at every phase, which a user's run does not.
bench fast 140 --preset fast --no-phase-timer $NOACC --out /tmp/runs/fast
bench quality 250 --preset quality --no-phase-timer $NOACC
# Packed against static sampler, same steps.
for SAMPLER in packed static; do
  bench "samplers_$SAMPLER" 45 --preset fast --steps 1500 --no-phase-timer $NOACC --set model.sampler=$SAMPLER
done
if [ "$(left)" -ge 25 ]; then
  timeout -k 5 "$(cap 30)" python3 -m pytest -q -p no:cacheprovider \
    tests/test_engine_static_sampler.py::test_cuda_static_step_matches_packed_and_never_syncs 2>&1 | tail -3
fi
if [ -d /tmp/runs/fast ] && [ "$(left)" -ge 25 ]; then
  echo "== texture export (2048, photos) on the GPU"
  ( time timeout -k 5 "$(cap 45)" python3 -m engine export /tmp/runs/fast --texture --texture-size 2048 --progress none ) \
    > "$OUT/texture.txt" 2>&1 && echo "OK texture" || { echo "FAIL texture"; tail -8 "$OUT/texture.txt"; }
  grep real "$OUT/texture.txt"
fi
bench graphs 50 --preset fast --steps 1500 --no-phase-timer $NOACC --set model.sampler=static --set train.cuda_graphs=true
[ -s "$RESULTS" ] && python3 - "$RESULTS" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r.get(k) for k in ("preset", "overrides", "steps", "train_s", "extract_s", "wall_to_mesh_s", "steps_per_s",
                                 "mean_samples_per_step", "peak_gpu_memory_gb", "heldout_psnr", "mask_iou")})
EOF
