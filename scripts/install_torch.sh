#!/usr/bin/env bash
# Install torch into the active Python environment, choosing the build and saying which:
#   - the CPU build (PyTorch's CPU wheel index) unless an NVIDIA GPU is present (nvidia-smi lists one);
#   - then the CUDA build (the default wheels on PyPI, several GB with the CUDA libraries).
# DAGAN_TORCH_BUILD=cpu or DAGAN_TORCH_BUILD=cuda overrides the choice. A torch that imports already is kept.
# A CPU wheel of the pinned version on this machine (pip's find-links) is used first, without the network.
#   bash scripts/install_torch.sh                  # install
#   bash scripts/install_torch.sh --print-build    # only print the choice: cpu or cuda
set -euo pipefail

TORCH_VERSION=2.13.0  # the version CI tests (.ci/constraints.txt)
CPU_INDEX=https://download.pytorch.org/whl/cpu

choose_build() {
    if [ -n "${DAGAN_TORCH_BUILD:-}" ]; then
        echo "$DAGAN_TORCH_BUILD"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
        echo cuda
    else
        echo cpu
    fi
}

describe_torch() {
    python -c 'import torch; cuda = torch.version.cuda; print(f"torch {torch.__version__}, " + (f"CUDA {cuda} build" if cuda else "CPU build"))'
}

build=$(choose_build)
if [ "$build" != cpu ] && [ "$build" != cuda ]; then
    echo "error: DAGAN_TORCH_BUILD must be cpu or cuda, not '$build'" >&2
    exit 2
fi
if [ "${1:-}" = "--print-build" ]; then
    echo "$build"
    exit 0
fi
if python -c "import torch" >/dev/null 2>&1; then
    echo "torch: already installed ($(describe_torch)); kept"
    exit 0
fi
if [ "$build" = cpu ]; then
    echo "torch $TORCH_VERSION: CPU build (no NVIDIA GPU found; DAGAN_TORCH_BUILD=cuda picks the CUDA build)"
    echo "  (~190 MB wheel, ~0.7 GB installed) a wheel already on this machine (pip's find-links) first, offline..."
    if pip install --quiet --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
        echo "  installed from the local wheel; now its small dependencies from the package index"
        pip install --quiet "torch==$TORCH_VERSION"
    else
        echo "  none here: downloading from $CPU_INDEX"
        pip install "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"
    fi
else
    echo "torch $TORCH_VERSION: CUDA build (nvidia-smi lists a GPU; DAGAN_TORCH_BUILD=cpu picks the CPU build)"
    echo "  downloading from PyPI with the CUDA libraries (several GB)"
    pip install "torch==$TORCH_VERSION"
fi
echo "torch: installed $(describe_torch)"
