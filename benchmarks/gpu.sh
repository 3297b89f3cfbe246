#!/usr/bin/env bash
# The GPU measurements, run from the repository root on a CUDA machine that has
# torch but cannot install anything, in two stages of a few minutes each:
#
#   benchmarks/gpu.sh spec     # CUDA tests; the full spec run over 3 seeds
#   benchmarks/gpu.sh speed    # speed.py, the per-phase profile, --compile, a report
#
# It reads the data from data/cifar10-jpeg.tar.gz (git-ignored; DATA=path for
# another copy) and, where the machine lacks them, installs this package's
# pure-Python dependencies from wheels in .whl/, fetched beforehand with
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       torch-lr-finder==0.2.2 torchinfo==1.8.0 captum==0.9.0
#
# Results go to benchmarks/results/ and, when $OUT is set, are copied there too.
# SMOKE=1 runs every step at toy size, on any machine, into /tmp/gpu-smoke: a
# check of this script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: benchmarks/gpu.sh spec|speed}
python=${PYTHON:-python3}
data=${DATA:-data/cifar10-jpeg.tar.gz}
cache=/tmp/cifar-resnet-cache
results=benchmarks/results
width=1 images=50000 small=() test_images=()
if [[ -n ${SMOKE:-} ]]; then
    results=/tmp/gpu-smoke/results width=0.25 images=1000 test_images=(--test-images 500)
    small=(--width 0.25 --epochs 1 --peak-epoch 1 --limit-train 1000 --limit-test 500)
fi
out=${OUT:-$results}
runs=/tmp/gpu-runs
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# Decode the JPEGs once; later steps read the cached arrays.
"$python" -m cifar_resnet data --data-dir "$data" --cache-dir "$cache" --out /tmp/gpu-data \
    --force --quiet
mkdir -p "$out"

case $stage in
spec)
    "$python" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_augment.py \
        tests/test_profiling.py tests/test_schedule.py tests/test_devices.py 2>&1 | tee "$out/gpu-tests.log" ||
        echo "some tests failed on this machine: see gpu-tests.log"
    "$python" benchmarks/train_bench.py --name spec --seeds 0 1 2 "${small[@]}" \
        --data-dir "$data" --cache-dir "$cache" --out "$runs/spec" --results-dir "$results"
    files=("$results"/*-spec.json)
    ;;
speed)
    "$python" benchmarks/speed.py --data-dir "$data" --cache-dir "$cache" --width "$width" \
        --images "$images" --rounds 2 --workers 8 --results-dir "$results"
    "$python" benchmarks/profile_epoch.py --data-dir "$data" --cache-dir "$cache" \
        --width "$width" --images "$images" "${test_images[@]}" --results-dir "$results"
    "$python" benchmarks/train_bench.py --name spec-compile --compile "${small[@]}" \
        --data-dir "$data" --cache-dir "$cache" --out "$runs/compile" --results-dir "$results"
    "$python" -m cifar_resnet report "$runs/compile" --quiet
    files=("$results"/*-speed-w"$width".json "$results"/*-profile-w"$width".json
        "$results"/*-spec-compile.json "$runs/compile/report.html")
    ;;
*)
    echo "unknown stage '$stage': use spec or speed" >&2
    exit 2
    ;;
esac
[[ $out == "$results" ]] || cp "${files[@]}" "$out"/
ls -l "$out"
