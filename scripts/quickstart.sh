#!/usr/bin/env bash
# Quickstart on a fresh machine (CPU is enough): set up, train both stages on the sample clip, animate.
# Smoke scale: it proves the pipeline runs end to end; see README "Train" for the VoxCeleb recipe.
set -euo pipefail
cd "$(dirname "$0")/.."

# Set up (a virtual environment in .venv; torch 2.13.0 CPU unless a torch is already there).
[ -d .venv ] || python3 -m venv .venv
source .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
pip install --quiet -e ".[train]"

# Stage 1: self-supervised depth from consecutive frames.
python train.py --config configs/quickstart.yaml --log_dir runs/quickstart-depth --set train_params.stage=depth
# Stage 2: keypoints + generator + discriminator, with the depth network of stage 1 frozen.
python train.py --config configs/quickstart.yaml --log_dir runs/quickstart \
    --set model_params.depth_params.checkpoint_dir=runs/quickstart-depth/depth
# Animate the sample portrait with the sample driving clip.
checkpoint=$(ls runs/quickstart/checkpoints/*.pt | tail -n 1)
# (--crop none: the samples already are face crops, and the face detector of the [faces] extra is not installed here)
python demo.py --checkpoint "$checkpoint" --source_image data/samples/source.png \
    --driving_video data/samples/driving.mp4 --result_video result.mp4 --relative --adapt_scale --crop none
echo "done: result.mp4 (training logs in runs/quickstart-depth and runs/quickstart)"
