#!/usr/bin/env bash
# Quickstart (CPU is enough): set up .venv, train a smoke-scale model on the sample clip (depth stage, then GAN
# stage), animate a frame of the clip that training never saw, and write a side-by-side video. A rerun skips the
# stages that are done. Everything but .venv goes to runs/quickstart (delete it to start again). README "Quickstart".
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

echo "=== [1/5] set-up: virtual environment .venv, torch, the dagan package ==="
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "error: the quickstart needs Python >= 3.10; python3 is $(python3 --version 2>&1)" >&2; exit 1; }
if [ ! -d .venv ]; then
    echo "creating .venv (python3 -m venv)"
    python3 -m venv .venv
fi
source .venv/bin/activate
bash scripts/install_torch.sh
if python -c "import dagan, os, sys; sys.exit(not dagan.__file__.startswith(os.getcwd() + os.sep))" 2>/dev/null; then
    echo "dagan: already installed (editable, from $PWD); kept"
else
    echo "dagan: installing the package (editable) and numpy, scipy, scikit-image, pillow, imageio-ffmpeg (ffmpeg"
    echo "  comes with it), dlib (face crops), ONNX Runtime and OpenVINO (the fast CPU path): about 1.2 GB installed"
    echo "  besides torch, exact versions from .ci/constraints.txt"
    pip install --quiet -c .ci/constraints.txt -e .
fi
echo ".venv: $(du -sm .venv | cut -f1) MB; set-up took $((SECONDS - started)) s"

python scripts/quickstart.py --first_stage_number 2 --total_stages 5 "$@"

echo
echo "quickstart finished in $((SECONDS - started)) s."
python scripts/quickstart.py --next "$@"
