#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment with the CPU build of torch and this package (+ dev tools).
# torch is installed first and pinned: an unpinned `pip install torch` pulls a multi-GB CUDA build.
# Usage: bash scripts/setup.sh            (creates ./.venv)
#        VENV=/path/to/venv bash scripts/setup.sh
#        VENV=.venv457 EXTRA_PACKAGES="transformers==4.57.* huggingface_hub<1" bash scripts/setup.sh
#                                         (the last 4.x transformers, as .ci/run tests it too)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}"
# shellcheck disable=SC2086  # EXTRA_PACKAGES is a list of requirement specifiers
"$VENV/bin/python" -m pip install --quiet -e ".[dev]" ${EXTRA_PACKAGES:-}
"$VENV/bin/python" -c "import torch, transformers, hf_rnn_attention; print('ready: torch', torch.__version__, '| transformers', transformers.__version__, '| hf_rnn_attention', hf_rnn_attention.__version__)"
