#!/usr/bin/env bash
# Every GPU row in one call, for a session lent a GPU machine (device time is short: one prepared script).
#   bash bench/gpu.sh OUT_DIR [SHARED_DIR]
# SHARED_DIR holds data/*.tar.gz and weights/ as ../shared does (default ../shared). Runs with the machine's
# own python3 and PYTHONPATH=src, no install: the CUDA tests, the whole suite with CUDA as the automatic
# device, the CIFAR-10 speed-run row, and the default (pretrained) command on a few hundred photos.
set -u
out=$(mkdir -p "${1:?usage: gpu.sh OUT_DIR [SHARED_DIR]}" && cd "$1" && pwd)
shared=$(cd "${2:-../shared}" && pwd)
export PYTHONPATH=src PYTHONUNBUFFERED=1 IMGCLS_DATA_ARCHIVES="$shared/data"
python=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, carry on whatever it returns
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? in $((SECONDS - start))s"; tail -n 4 "$out/$name.log"
    find bench/results -name "*.json" -newer "$out/machine.txt" -exec cp {} "$out/" \;
}
# bench/pretrained.py runs `imgcls` beside the interpreter and finds the weights beside the repo
if [ ! -x "$(dirname "$(command -v "$python")")/imgcls" ]; then
    printf '#!/bin/sh\nexec %s -c "from imgcls.cli.main import run; run()" "$@"\n' "$(command -v "$python")" \
        >"$(dirname "$(command -v "$python")")/imgcls" && chmod +x "$(dirname "$(command -v "$python")")/imgcls"
fi
[ -e ../shared ] || ln -s "$shared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
$python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$out/machine.txt"
step cuda-tests 120 $python -m pytest -p no:cacheprovider -o addopts= -q -k "cuda or gpu" tests/test_augment.py tests/test_speedrun.py tests/test_train.py
step cifar10-speedrun 200 $python bench/cifar10.py --device cuda --compile --seeds 0 1 2
step pretrained-default 100 $python bench/pretrained.py --datasets cifar10 --variants finetune freeze --seeds 0
step suite-on-cuda 200 $python -m pytest -p no:cacheprovider -o addopts= -q --continue-on-collection-errors tests
