#!/usr/bin/env bash
# GPU checks for a CUDA machine, in one short run: the numerical tests on cuda, ExactGP
# timings per device, then KissGP and SVGP against GPyTorch on the GPU.
# Needs python3 with torch (CUDA), pytest, scikit-learn and gpytorch; gpkernels needs
# nothing else, so the pipeline's dependencies (ray, zarr) need not be there.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, gpytorch; print('torch', torch.__version__, 'gpytorch', gpytorch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_exact_gp.py \
  tests/test_kiss.py tests/test_svgp.py tests/test_multitask.py tests/test_optim.py -k "cuda or not cpu"
status=$?
python3 bench/exact_devices.py
python3 bench/vs_gpytorch.py --device cuda --timeout "${GPU_BENCH_TIMEOUT:-90}"
exit $status
