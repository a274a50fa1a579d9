#!/usr/bin/env bash
# The GPU check (issue #15): run on a machine with an NVIDIA GPU, PyTorch with CUDA and no package index.
#
#   bash bench/gpu_check.sh --build        # here, with a package index: the wheels it needs, into .whl/
#   bash bench/gpu_check.sh [OUT] [STEPS]  # there, in the repository root (OUT default gpu-check-out)
#
# It installs hwcompress and its two profiler plugins from the wheels in .whl/ (with torch-pruning and
# platformdirs, which such images lack) into a private folder, then runs, each step under its own time
# limit, so that one failure does not hide the others:
#   env        the GPU, driver, PyTorch and what hwcompress sees (hwcompress devices)
#   tests      the gpu- and tensorrt-marked tests
#   agreement  bench/gpu_agreement.py: the cuda profiler against plain eager and graph-replay loops
#   profile    hwcompress profile --device nvidia-gpu (resnet18, fp16)
#   compare    hwcompress compare resnet18 mobilenet_v2 --device nvidia-gpu
#   search     hwcompress search --device nvidia-gpu --latency-ratio 0.9 --episodes 30 (the embedded default; on an
#              H100 its smallest channel-pruned student measures 0.85x the teacher: kernel count, not width, bounds it;
#              with the in-context fit, two repairs and fine-tuning at two learning rates it ran past 205 s there)
#   lut        bench/lut_fidelity.py --device nvidia-gpu: a resnet18 LUT recorded on the GPU against measured variants
#   align      bench/gpu_channel_alignment.py: one convolution at every channel count 48-72, fp16 and fp32
#   int8       hwcompress search --device nvidia-gpu --quantize int8: where the GPU is measured by the cuda profiler
#              (no TensorRT), one line naming the missing int8 path and exit code 2, nothing written
# STEPS is a comma-separated subset (default: all). Everything lands in OUT: summary.txt (one line per
# step: exit code and seconds), log.txt (every step's output) and the JSON documents. On the device tool,
# leave OUT out (the script then writes into $OUT itself) so that a run cut short still returns what it
# wrote. All steps take about 10 minutes on an H100, more than one call may run: split them,
#   bash bench/gpu_check.sh "" env,tests,agreement,profile,compare     # about 4 minutes
#   bash bench/gpu_check.sh "" search,lut,align,int8                   # about 6 minutes A trained default
# teacher in .gpu-cache/ (HWCOMPRESS_CACHE_DIR) saves the search its two minutes of training.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
    rm -rf .whl && mkdir -p .whl || exit 1
    python3 -m pip wheel -q --no-deps -w .whl . ./profilers/onnxruntime ./profilers/tensorrt || exit 1
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "torch-pruning==1.6.1" "platformdirs>=3" || exit 1
    ls -l .whl
    exit 0
fi

OUT=${1:-${OUT:-gpu-check-out}}
STEPS=${2:-env,tests,agreement,profile,compare,search,lut,align,int8}
mkdir -p "$OUT"
SITE=/tmp/hwcompress-site
rm -rf "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || { echo "wheel install failed" | tee "$OUT/summary.txt"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
[ -d .gpu-cache ] && export HWCOMPRESS_CACHE_DIR="$PWD/.gpu-cache"
export HWCOMPRESS_DATA_DIR=/tmp/hwcompress-data HWCOMPRESS_CONFIG_DIR=/tmp/hwcompress-config
HW="python3 -m hwcompress"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
    local start=$SECONDS
    echo "===== $name: $*" >> "$OUT/log.txt"
    timeout "$limit" "$@" >> "$OUT/log.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv; \
    python3 -c 'import torch, onnxruntime; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), onnxruntime.__version__)'; \
    $HW devices; $HW plugins"
step tests 120 python3 -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" profilers/tensorrt/tests tests -rs
step agreement 75 python3 bench/gpu_agreement.py --models resnet18,mobilenet_v2 --precision fp16 --rounds 5 --runs 200 --json "$OUT/agreement.json"
step profile 40 $HW profile --device nvidia-gpu -m resnet18 --json "$OUT/profile.json"
step compare 40 $HW compare resnet18 mobilenet_v2 --device nvidia-gpu --rounds 5 --json "$OUT/compare.json"
rm -rf /tmp/hwcompress-gpu-search
step search 330 $HW search --device nvidia-gpu --latency-ratio 0.9 --episodes 30 --finetune-epochs 1 -o /tmp/hwcompress-gpu-search --json "$OUT/search.json"
step lut 120 python3 bench/lut_fidelity.py --device nvidia-gpu --models resnet18 --points 3 --variants 10 --passes 1 --runs 30 --rounds 3 --json "$OUT/lut_fidelity.json"
step align 120 python3 bench/gpu_channel_alignment.py --json "$OUT/alignment.json"
rm -rf /tmp/hwcompress-gpu-int8
step int8 60 bash -c "$HW search --device nvidia-gpu --quantize int8 --latency-ratio 0.5 -o /tmp/hwcompress-gpu-int8; \
    echo \"exit code \$?; written: \$(ls /tmp/hwcompress-gpu-int8 2>&1 | head -3)\""
cat "$OUT/summary.txt"
