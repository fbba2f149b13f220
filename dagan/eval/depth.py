"""Depth quality against ground truth (synthetic clips): the standard monocular-depth errors.

A self-supervised depth network knows depth only up to one unknown scale per image, so every prediction is
first **median scaled** per image, ``prediction * median(ground_truth[valid]) / median(prediction[valid])``
(Monodepth2's evaluation), and then compared on the valid pixels of that image with (Eigen et al. 2014):

    AbsRel = mean |d - d*| / d*          SqRel = mean (d - d*)^2 / d*
    RMSE   = sqrt(mean (d - d*)^2)       RMSElog = sqrt(mean (log d - log d*)^2)
    delta < 1.25^k = fraction of pixels with max(d / d*, d* / d) < 1.25^k, k = 1, 2, 3
    delta < 1.05   = the same with the tighter threshold 1.05 (informative on faces, see below)

with d the scaled prediction and d* the ground-truth camera z (scene units: the head centre sits at about
1.6, the background plane at 3.0). Errors are computed per image and averaged over images.

Two pixel sets, each with its own median scaling:

* ``head``: the pixels whose ray hits the head (``head_mask``). The meaningful one: the depth stage learns
  from the head's rigid motion, while the static background is explained by a static camera and is masked
  out of its loss (auto-masking), so background depth gets no training signal.
* ``full``: every pixel, background plane included. Most pixels are background, so its median is the
  plane's depth; the errors mostly measure whether the head is put in front of the background.

Head pixels span only about 1.15-1.55, so ``delta < 1.25`` saturates near 1 on them for any sensible
prediction, a constant included; AbsRel, RMSE and ``delta < 1.05`` are the informative head numbers.

Baselines: ``constant_depth`` (every pixel at one depth: after median scaling, the median of the ground
truth) and the untrained network (``untrained_model``: the initialisation ``train_depth`` starts from).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from dagan.config import Config, config_from_dict, load_config
from dagan.data.synthetic.heads import MotionRanges, render_clip
from dagan.networks.depth import disparity_to_depth

EVAL_SEED = 1_000_000  # render seed of the first held-out clip; training sets use small seeds
EVAL_FPS = 1.0  # frames of an evaluation clip are 1 s apart: varied poses
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta_1", "delta_2", "delta_3", "delta_tight")
TIGHT_DELTA = 1.05  # threshold of ``delta_tight``
REGIONS = ("head", "full")

DepthPredictor = Callable[[torch.Tensor], torch.Tensor]  # frames (B, 3, H, W) -> depth (B, 1, H, W) > 0


@dataclass(frozen=True)
class DepthErrors:
    """Mean per-image errors over a set of images (module docstring); ``count`` images."""

    abs_rel: float
    sq_rel: float
    rmse: float
    rmse_log: float
    delta_1: float
    delta_2: float
    delta_3: float
    delta_tight: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class EvaluationSet:
    """Held-out frames with ground truth: frames (N, 3, H, W) in [0, 1], depth (N, 1, H, W) camera z,
    head_mask (N, 1, H, W) bool, and the render seeds of the clips they come from."""

    frames: torch.Tensor
    depth: torch.Tensor
    head_mask: torch.Tensor
    seeds: list[int]


def median_scale(prediction: torch.Tensor, ground_truth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image median scaling of predictions (N, 1, H, W) to the ground truth on ``valid`` pixels (N, 1, H, W)."""
    scaled = torch.empty_like(prediction)
    for index in range(prediction.shape[0]):
        mask = valid[index]
        ratio = ground_truth[index][mask].median() / prediction[index][mask].median()
        scaled[index] = prediction[index] * ratio
    return scaled


def image_errors(prediction: torch.Tensor, ground_truth: torch.Tensor) -> dict[str, float]:
    """The errors of one image from its valid pixels: prediction, ground_truth (M,) positive depths."""
    prediction, ground_truth = prediction.double(), ground_truth.double()
    ratio = torch.maximum(prediction / ground_truth, ground_truth / prediction)
    difference = prediction - ground_truth
    return {"abs_rel": float((difference.abs() / ground_truth).mean()),
            "sq_rel": float((difference ** 2 / ground_truth).mean()),
            "rmse": float(difference.pow(2).mean().sqrt()),
            "rmse_log": float((prediction.log() - ground_truth.log()).pow(2).mean().sqrt()),
            "delta_1": float((ratio < 1.25).double().mean()),
            "delta_2": float((ratio < 1.25 ** 2).double().mean()),
            "delta_3": float((ratio < 1.25 ** 3).double().mean()),
            "delta_tight": float((ratio < TIGHT_DELTA).double().mean())}


def depth_errors(prediction: torch.Tensor, ground_truth: torch.Tensor, valid: torch.Tensor) -> DepthErrors:
    """Median-scale predictions (N, 1, H, W) per image on ``valid`` (N, 1, H, W) and average the per-image errors.

    Images without a valid pixel are skipped.
    """
    if prediction.shape != ground_truth.shape or valid.shape != ground_truth.shape:
        raise ValueError(f"shapes differ: prediction {tuple(prediction.shape)}, ground truth "
                         f"{tuple(ground_truth.shape)}, valid {tuple(valid.shape)}")
    if not torch.all(prediction[valid] > 0):
        raise ValueError("predicted depths must be positive on valid pixels")
    keep = valid.flatten(1).any(1)
    prediction, ground_truth, valid = prediction[keep], ground_truth[keep], valid[keep]
    scaled = median_scale(prediction.double(), ground_truth.double(), valid)
    per_image = [image_errors(scaled[index][valid[index]], ground_truth[index][valid[index]])
                 for index in range(scaled.shape[0])]
    means = {name: sum(errors[name] for errors in per_image) / max(1, len(per_image)) for name in METRIC_NAMES}
    return DepthErrors(**means, count=len(per_image))


def evaluate_predictions(prediction: torch.Tensor, data: EvaluationSet) -> dict[str, DepthErrors]:
    """Errors of predicted depths (N, 1, H, W) on the head pixels and on the full image."""
    return {"head": depth_errors(prediction, data.depth, data.head_mask),
            "full": depth_errors(prediction, data.depth, torch.ones_like(data.head_mask))}


def render_evaluation_set(num_clips: int = 32, frames_per_clip: int = 4, size: int = 64, seed: int = EVAL_SEED,
                          fps: float = EVAL_FPS, motion: MotionRanges = MotionRanges()) -> EvaluationSet:
    """Held-out frames: ``frames_per_clip`` frames of each of ``num_clips`` clips rendered with seeds
    ``seed .. seed + num_clips - 1`` and ``motion`` (frames ``1 / fps`` seconds apart: varied poses)."""
    clips = [render_clip(frames_per_clip, size=size, seed=seed + index, fps=fps, motion=motion)
             for index in range(num_clips)]
    return EvaluationSet(frames=torch.cat([clip.frames for clip in clips]),
                         depth=torch.cat([clip.depth for clip in clips]),
                         head_mask=torch.cat([clip.head_mask for clip in clips]),
                         seeds=[seed + index for index in range(num_clips)])


def constant_depth(frames: torch.Tensor) -> torch.Tensor:
    """The constant-depth baseline: ones (B, 1, H, W) for frames (B, 3, H, W)."""
    return frames.new_ones(frames.shape[0], 1, *frames.shape[2:])


def network_depth(model, config: Config, batch_size: int = 32) -> DepthPredictor:
    """A predictor from a :class:`~dagan.model.DaGAN`'s depth network (eval mode, no gradients): its sigmoid
    disparity mapped to depth with ``disparity_to_depth`` and ``depth_train_params.min_depth / max_depth``."""
    params = config.depth_train_params
    model.eval()

    @torch.no_grad()
    def predict(frames: torch.Tensor) -> torch.Tensor:
        outputs = [disparity_to_depth(model.depth(frames[start:start + batch_size]), params.min_depth,
                                      params.max_depth) for start in range(0, frames.shape[0], batch_size)]
        return torch.cat(outputs)

    return predict


def untrained_model(config: Config):
    """The DaGAN that ``train_depth`` starts from, untrained: built right after seeding torch with
    ``train_params.seed``, as ``train_depth`` does (one process). The global RNG state is left as it was."""
    from dagan.model import DaGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train_params.seed)
        return DaGAN(config)


def load_depth_model(checkpoint: str | os.PathLike, config: Optional[Config] = None):
    """A DaGAN with a trained depth network, and the config its disparity range comes from.

    checkpoint: one of our checkpoints (``<run>/checkpoints/*.pt``: the config is inside), a run's
        ``checkpoints`` folder (its newest checkpoint), or an official-layout depth folder (``encoder.pth`` +
        ``depth.pth``, e.g. ``<run>/depth``), whose config is ``config``, else ``<folder>/../config.yaml``.
    Returns ``(model, config)``; the model is in eval mode.
    """
    from dagan.checkpoint import CheckpointError, load_checkpoint
    from dagan.model import load_official_depth_into
    from dagan.model import DaGAN

    path = os.fspath(checkpoint)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "encoder.pth")):
        if config is None:
            run_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
            if not os.path.isfile(run_config):
                raise CheckpointError(f"depth folder {path!r} has no ../config.yaml; pass the config it was "
                                      "trained with (--config)")
            config = load_config(run_config)
        model = DaGAN(config)
        load_official_depth_into(model, path)
        return model.eval(), config
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path) if name.endswith(".pt"))
        if not names:
            raise CheckpointError(f"{path!r} holds neither encoder.pth/depth.pth nor *.pt checkpoints")
        path = os.path.join(path, names[-1])
    state = load_checkpoint(path)
    config = config_from_dict(state["config"]) if config is None else config
    model = DaGAN(config)
    model.load_network_state_dicts({name: state["networks"][name] for name in ("depth_encoder", "depth_decoder")})
    return model.eval(), config


def evaluate_predictor(predictor: DepthPredictor, data: EvaluationSet) -> dict[str, DepthErrors]:
    """Run ``predictor`` on the evaluation frames and score it."""
    return evaluate_predictions(predictor(data.frames), data)


def relative_improvement(errors: DepthErrors, baseline: DepthErrors, metric: str = "abs_rel") -> float:
    """1 - errors / baseline for an error metric (0.2 = 20% lower than the baseline)."""
    return 1.0 - getattr(errors, metric) / getattr(baseline, metric)


def format_table(results: dict[str, dict[str, DepthErrors]],
                 metrics: tuple[str, ...] = ("abs_rel", "rmse", "delta_1", "delta_tight")) -> str:
    """A Markdown table: one row per method, AbsRel / RMSE / delta<1.25 / delta<1.05 for the head and the full
    image."""
    titles = {"abs_rel": "AbsRel", "sq_rel": "SqRel", "rmse": "RMSE", "rmse_log": "RMSElog",
              "delta_1": "δ<1.25", "delta_2": "δ<1.25²", "delta_3": "δ<1.25³",
              "delta_tight": f"δ<{TIGHT_DELTA:g}"}
    header = ["method"] + [f"{region} {titles[metric]}" for region in REGIONS for metric in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, errors in results.items():
        cells = [method] + [_format(getattr(errors[region], metric)) for region in REGIONS for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def check_disjoint_seeds(eval_seeds: list[int], train_seeds: Optional[range]) -> None:
    """Raise ValueError when evaluation clips were also training clips."""
    if train_seeds is not None and set(eval_seeds) & set(train_seeds):
        overlap = sorted(set(eval_seeds) & set(train_seeds))
        raise ValueError(f"evaluation seeds overlap the training clips' seeds {train_seeds.start}.."
                         f"{train_seeds.stop - 1} (e.g. {overlap[0]}); pick --seed outside that range")


def training_spec(config: Config):
    """The :class:`~dagan.data.synthetic.dataset.SyntheticSpec` a config trains on, or None for video data."""
    from dagan.data.synthetic.dataset import SyntheticSpec, is_synthetic_root

    root = config.dataset_params.root_dir
    return SyntheticSpec.parse(root) if is_synthetic_root(root) else None


def training_seeds(config: Config) -> Optional[range]:
    """Render seeds of the training clips when the config trains on a synthetic root, else None."""
    spec = training_spec(config)
    return spec.seeds if spec is not None else None


def training_motion(config: Config) -> MotionRanges:
    """The motion limits of the training clips (the renderer's defaults for video data): evaluation clips are
    held-out draws from the training distribution."""
    spec = training_spec(config)
    return spec.motion if spec is not None else MotionRanges()


def predict_depths(model, config: Config, data: EvaluationSet) -> dict[str, torch.Tensor]:
    """Depth (N, 1, H, W) of the evaluation frames from the constant baseline, the untrained network
    (``untrained_model``) and ``model``, by method name."""
    predictors = {"constant depth": constant_depth,
                  "untrained network": network_depth(untrained_model(config), config),
                  "trained network": network_depth(model, config)}
    return {name: predictor(data.frames) for name, predictor in predictors.items()}


def compare_depth(model, config: Config, data: EvaluationSet) -> dict[str, dict[str, DepthErrors]]:
    """Errors of the constant baseline, the untrained network and ``model`` (``predict_depths``)."""
    return {name: evaluate_predictions(depth, data) for name, depth in predict_depths(model, config, data).items()}


def depth_figure(data: EvaluationSet, predictions: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
    """A picture of head depth: one row per evaluation frame in ``indices``; columns: the frame, the ground truth,
    then each prediction median-scaled on the head pixels. Near = bright; every depth map of a row is drawn with
    the ground truth's head range of that row (values outside it clipped) and black background, so the shapes
    compare directly. Returns (3, rows * H, columns * W) in [0, 1]."""
    rows = []
    for index in indices:
        mask, truth = data.head_mask[index], data.depth[index]
        near, far = truth[mask].min(), truth[mask].max()
        tiles = [data.frames[index]]
        for depth in [truth] + [prediction[index] for prediction in predictions.values()]:
            scaled = depth * truth[mask].median() / depth[mask].median()
            brightness = ((far - scaled) / (far - near).clamp_min(1e-8)).clamp(0, 1) * mask
            tiles.append(brightness.expand(3, -1, -1))
        rows.append(torch.cat(tiles, dim=2))
    return torch.cat(rows, dim=1)


def results_to_dict(results: dict[str, dict[str, DepthErrors]]) -> dict:
    """Nested plain dicts for JSON: method -> region -> metric -> value."""
    return {method: {region: errors.as_dict() for region, errors in by_region.items()}
            for method, by_region in results.items()}
