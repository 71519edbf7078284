#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with every pinned dependency and radfusion
# itself (editable). Usage: bash scripts/setup.sh   (then: source .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip "setuptools>=77" wheel
# PyRadiomics ships only an sdist whose build needs numpy (and versioneer) already installed:
# install those first, then build it without isolation. (PyPI's 3.1.0 sdist declares version
# 3.0.1a1 and lacks its C headers, so pip cannot use it; 3.0.1 builds on Python 3.11.)
$PIP install -q -c requirements-lock.txt numpy versioneer
$PIP install -q --no-build-isolation -c requirements-lock.txt pyradiomics==3.0.1
$PIP install -q -c requirements-lock.txt -r requirements.txt
$PIP install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import radiomics, torch, pytorch_lightning, monai, nnunetv2, hydra, wandb, sksurv, radfusion; print('radfusion environment ready:', 'torch', torch.__version__, '| pyradiomics', radiomics.__version__)"
