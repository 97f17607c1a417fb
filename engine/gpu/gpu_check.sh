#!/usr/bin/env bash
# The whole GPU check (issues 3 and 7) in one script, for a bare GPU machine with no network that has PyTorch
# (CUDA), Triton and Lightning but not every other dependency.
#
#   bash engine/gpu/gpu_check.sh --prepare   # here, once: wheels + an 800x600 copy of the DTU scan into .gpu/
#   bash engine/gpu/gpu_check.sh             # there, from the repo root, with .gpu/ carried; results in $OUT
#
# Budget: <= 8 minutes wall in total: each run is capped by `timeout` and by what is left of the 470 s deadline
# (the later runs get what remains). Copy the printed JSON lines into engine/BENCHMARKS.md with the device, date
# and commit they carry.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--prepare" ]; then
  set -e
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  mkdir -p .gpu/whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl omegaconf==2.4.0 PyMCubes==0.1.6 trimesh==4.5.0 xatlas==0.0.11
  [ -d .gpu/dtu65_800 ] || .venv/bin/python -m datasets.downscale ../shared/data/dtu_scan65 .gpu/dtu65_800 --factor 2
  # The GPU machine gets a copy of the working tree without .git: record the commit it is running.
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!.gpu' || echo -dirty)" > .gpu/commit.txt
  du -sh .gpu
  exit 0
fi

OUT="${OUT:-/tmp/gpu_check}"
DEADLINE=$((SECONDS + 470))
# cap N: N seconds, or what is left before the deadline if that is less.
cap() { local left=$((DEADLINE - SECONDS)); echo $(( left < 1 ? 1 : (left < $1 ? left : $1) )); }  # never 0: no limit
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
NEUS_COMMIT="$(cat .gpu/commit.txt 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"
export NEUS_COMMIT
echo "$NEUS_COMMIT" | tee "$OUT/commit.txt"
python3 -m engine doctor --json > "$OUT/doctor.json" || cat "$OUT/doctor.json"

SCENE=.gpu/dtu65_800
RESULTS="$OUT/results.jsonl"
# Unit tests that only run where CUDA (and the optional accelerators) exist.
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_engine_accel.py tests/test_engine_render.py \
  tests/test_engine_static_sampler.py::test_cuda_static_step_matches_packed_and_never_syncs \
  2>&1 | tail -5 | tee "$OUT/pytest.txt"
# fast: a usable mesh in <= 60 s is the goal; quality: 20k steps + 512^3 mesh in <= 3 minutes.
NOACC="--set accel.tcnn=false --set accel.nerfacc=false"
timeout "$(cap 120)" python3 -m engine.bench "$SCENE" --preset fast $NOACC --results "$RESULTS" 2> "$OUT/fast.err" \
  || tail -20 "$OUT/fast.err"
# Issue 7, packed vs static sampler side by side: same steps, no per-phase timer (it syncs the device every phase,
# which would hide what the sync-free static step gains). 2000 steps each to fit the budget.
for SAMPLER in packed static; do
  timeout "$(cap 75)" python3 -m engine.bench "$SCENE" --preset fast --steps 2000 --no-phase-timer $NOACC \
    --set model.sampler=$SAMPLER --results "$RESULTS" 2> "$OUT/fast_$SAMPLER.err" || tail -20 "$OUT/fast_$SAMPLER.err"
done
timeout "$(cap 260)" python3 -m engine.bench "$SCENE" --preset quality $NOACC --results "$RESULTS" 2> "$OUT/quality.err" \
  || tail -20 "$OUT/quality.err"
# Static sampler with CUDA graphs (train.cuda_graphs): experimental, so last, on whatever time is left.
if [ "$(cap 90)" -ge 45 ]; then
  timeout "$(cap 90)" python3 -m engine.bench "$SCENE" --preset fast --steps 2000 --no-phase-timer $NOACC \
    --set model.sampler=static --set train.cuda_graphs=true --results "$RESULTS" 2> "$OUT/fast_graphs.err" \
    || tail -20 "$OUT/fast_graphs.err"
fi
# Side by side with the optional accelerators, where the machine has them (none is installed by this script).
if python3 -c "import tinycudann" 2>/dev/null || python3 -c "import nerfacc" 2>/dev/null; then
  if [ "$(cap 100)" -ge 45 ]; then
    timeout "$(cap 100)" python3 -m engine.bench "$SCENE" --preset fast --set accel.tcnn=auto --set accel.nerfacc=auto \
      --results "$RESULTS" 2> "$OUT/fast_accel.err" || tail -20 "$OUT/fast_accel.err"
  fi
fi
cat "$RESULTS"
