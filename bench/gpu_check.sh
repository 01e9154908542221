#!/usr/bin/env bash
# GPU checks for a CUDA machine: the numerical tests on cuda, then ExactGP timings cuda vs cpu.
# Needs python3 with torch (CUDA), pytest and scikit-learn; gpkernels needs nothing else.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_exact_gp.py -k "cuda or not cpu"
status=$?
python3 bench/exact_devices.py
exit $status
