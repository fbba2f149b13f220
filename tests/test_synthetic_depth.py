"""Synthetic talking heads with ground-truth depth: the data the trainer sees is exact geometry, the datasets
are deterministic, and a short depth-stage run learns head geometry (beats the untrained network and a
constant depth on held-out clips)."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import config_path, load_script
from dagan.cli.train import main as train_main
from dagan.config import load_config
from dagan.data.synthetic import BACKGROUND_DEPTH, relative_pose
from dagan.data.synthetic.dataset import (SyntheticPairDataset, SyntheticSpec, SyntheticTripletDataset,
                                          is_synthetic_root)
from dagan.eval.depth import (EVAL_SEED, DepthErrors, check_disjoint_seeds, compare_depth, constant_depth,
                              depth_errors, depth_figure, evaluate_predictions, format_table, load_depth_model,
                              relative_improvement, render_evaluation_set, training_motion, training_seeds)
from dagan.geometry import backproject, project, reproject_grid, warp
from dagan.io import read_image_uint8

SIZE = 64
RIGID = SyntheticSpec(num_clips=2, num_frames=5, seed=7, talking=False)  # fps 5: 1-4 pixels between frames


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary erosion of masks (B, 1, H, W) with a (2 pixels + 1)^2 square."""
    return -F.max_pool2d(-mask.float(), 2 * pixels + 1, 1, pixels) > 0.5


def reconstruct_target(clip, target: int, depth: torch.Tensor):
    """Warp frame target + 1 into frame target through ``depth`` (1, H, W), the true head pose and intrinsics
    with dagan.geometry, as the depth stage does (``reproject_grid`` then ``warp``).

    Returns (reconstruction (3, H, W), visible (H, W) bool): eroded head pixels of the target whose point lands
    inside frame target + 1 on its head, unoccluded (judged with the true depth)."""
    intrinsics = clip.intrinsics[None].double()  # (1, 3, 3)
    pose = relative_pose(clip, target, target + 1)[None].double()  # (1, 4, 4) target camera -> next camera
    grid = reproject_grid(depth[None].double(), intrinsics, pose)  # (1, H, W, 2)
    reconstruction = warp(clip.frames[target + 1][None].double(), grid, padding_mode="border")[0]
    true_grid = reproject_grid(clip.depth[target][None].double(), intrinsics, pose)
    pixels, moved_depth = project(backproject(clip.depth[target][None].double(), intrinsics), intrinsics, pose)
    seen_depth = warp(clip.depth[target + 1][None].double(), true_grid, padding_mode="border")[0, 0]
    seen_head = warp(clip.head_mask[target + 1][None].double(), true_grid, padding_mode="border")[0, 0] > 0.999
    inside = ((pixels >= 2) & (pixels <= SIZE - 3)).all(-1).view(SIZE, SIZE)
    unoccluded = (seen_depth - moved_depth.view(SIZE, SIZE)).abs() < 0.01
    visible = erode(clip.head_mask[target][None], 2)[0, 0] & inside & seen_head & unoccluded
    return reconstruction, visible


def test_geometry_check_true_depth_reproduces_the_target_frame():
    """Frame t+1 warped into frame t with the ground-truth depth, head pose and intrinsics reproduces frame t on
    visible head pixels; a depth 30% too far, or the flat background depth, is several times worse."""
    dataset = SyntheticTripletDataset(RIGID, (SIZE, SIZE, 3), is_train=False)
    errors = []
    for index in range(len(dataset)):
        clip = dataset.store.clip(index)
        assert torch.equal(dataset[index]["target"], clip.frames[RIGID.num_frames // 2])  # the data the trainer sees
        for target in range(clip.num_frames - 1):
            true_depth = clip.depth[target]
            _, visible = reconstruct_target(clip, target, true_depth)
            assert visible.sum() > 0.5 * erode(clip.head_mask[target][None], 2).sum()

            def error(depth: torch.Tensor) -> float:
                reconstruction, _ = reconstruct_target(clip, target, depth)
                return float((reconstruction - clip.frames[target].double()).abs().mean(0)[visible].mean())

            errors.append((error(true_depth), error(true_depth * 1.3),
                           error(torch.full_like(true_depth, BACKGROUND_DEPTH))))
    true_error, scaled_error, plane_error = torch.tensor(errors).mean(0).tolist()
    assert true_error < 0.02, true_error  # bilinear resampling of a texture with about one texel per pixel
    assert scaled_error > 5 * true_error and plane_error > 5 * true_error, (true_error, scaled_error, plane_error)


# Datasets.
def test_synthetic_root_round_trip_and_errors():
    spec = SyntheticSpec.parse("synthetic://num_clips=3,fps=2.5,talking=false")
    assert (spec.num_clips, spec.fps, spec.talking, spec.num_frames) == (3, 2.5, False, SyntheticSpec().num_frames)
    assert SyntheticSpec.parse(str(spec)) == spec and SyntheticSpec.parse("synthetic://") == SyntheticSpec()
    assert is_synthetic_root("synthetic://") and not is_synthetic_root("data/vox")
    assert list(spec.seeds) == [0, 1, 2]
    translating = SyntheticSpec.parse("synthetic://rotation_scale=0,translation_scale=3").motion
    assert translating.max_yaw_degrees == 0 and translating.max_translation[2] == pytest.approx(0.24)
    with pytest.raises(ValueError, match="num_clip"):
        SyntheticSpec.parse("synthetic://num_clip=3")
    with pytest.raises(ValueError, match="fps"):
        SyntheticSpec.parse("synthetic://fps=fast")
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticSpec.parse("synthetic://num_frames=0")
    with pytest.raises(ValueError, match="square"):
        SyntheticTripletDataset(spec, (64, 48, 3))
    with pytest.raises(ValueError, match="too short"):
        SyntheticTripletDataset(SyntheticSpec(num_frames=4), (32, 32, 3), stride=2)


def test_datasets_are_deterministic_per_seed_and_key():
    config = load_config(config_path("synthetic-depth.yaml"))
    spec = SyntheticSpec(num_clips=3, num_frames=6)
    augmentation = config.dataset_params.augmentation_params
    rng_state = torch.get_rng_state()
    first = SyntheticTripletDataset(spec, (32, 32, 3), augmentation_params=augmentation, seed=3)
    second = SyntheticTripletDataset(spec, (32, 32, 3), augmentation_params=augmentation, seed=3, prerender=True)
    keys = [0, 1, 2, 4, 7]
    for key in keys:
        a, b = first.sample(key), second.sample(key)
        assert a["name"] == b["name"]
        for name in ("previous", "target", "next", "depth", "head_mask"):
            assert torch.equal(a[name], b[name]), (key, name)
    assert torch.equal(torch.get_rng_state(), rng_state)
    other_seed = SyntheticTripletDataset(spec, (32, 32, 3), augmentation_params=augmentation, seed=4)
    assert any(not torch.equal(first.sample(key)["target"], other_seed.sample(key)["target"]) for key in keys)
    sample = first.sample(1)
    assert sample["target"].shape == (3, 32, 32) and sample["depth"].shape == (1, 32, 32)
    assert sample["head_mask"].dtype == torch.bool and 0 <= sample["target"].min() <= sample["target"].max() <= 1
    # The ground truth follows the frames' flips: its head region is where the target frame shows the head.
    clip = first.store.clip(1)
    assert any(torch.equal(sample["depth"], depth) for frame in clip.depth for depth in (frame, frame.flip(-1)))
    pairs = [SyntheticPairDataset(spec, (32, 32, 3), augmentation_params=augmentation, seed=3) for _ in range(2)]
    assert all(torch.equal(pairs[0][k]["driving"], pairs[1][k]["driving"]) for k in keys)
    test_pair = SyntheticPairDataset(spec, (32, 32, 3), is_train=False)[0]  # clip 0, frames 0 and 3
    assert torch.equal(test_pair["source"], first.store.clip(0).frames[0])
    assert torch.equal(test_pair["depth_driving"], first.store.clip(0).depth[spec.num_frames // 2])


# Metrics.
def test_depth_errors_are_scale_invariant_and_zero_for_the_truth():
    data = render_evaluation_set(num_clips=2, frames_per_clip=1, size=32)
    exact = evaluate_predictions(data.depth * 7.0, data)
    for region in ("head", "full"):
        assert exact[region].abs_rel < 1e-6 and exact[region].rmse < 1e-6 and exact[region].delta_1 == 1.0
        assert exact[region].delta_tight == 1.0
    # One image, two pixels: ratios 1.1 and 1.0 after median scaling (median of two = the lower value).
    truth = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    two_pixels = depth_errors(truth * torch.tensor([1.0, 1.1]).view(1, 1, 1, 2), truth, torch.ones_like(truth).bool())
    assert two_pixels.delta_tight == 0.5 and two_pixels.delta_1 == 1.0
    assert two_pixels.abs_rel == pytest.approx(0.05)
    constant = evaluate_predictions(constant_depth(data.frames), data)
    assert 0.01 < constant["head"].abs_rel < 0.1 < constant["full"].abs_rel
    with pytest.raises(ValueError, match="positive"):
        depth_errors(-data.depth, data.depth, data.head_mask)
    # The picture: frame, ground truth, then each method; near = bright, background black.
    depth_before = data.depth.clone()
    figure = depth_figure(data, {"truth": data.depth * 3.0, "constant depth": constant_depth(data.frames)}, [0, 1])
    assert figure.shape == (3, 2 * 32, 4 * 32) and 0 <= figure.min() and figure.max() <= 1
    tiles = figure[0].unflatten(0, (2, 32)).unflatten(2, (4, 32))  # (row, y, column, x)
    for row in range(2):
        mask = data.head_mask[row, 0]
        assert torch.allclose(tiles[row, :, 1], tiles[row, :, 2], atol=1e-6)  # a scaled truth draws as the truth
        assert tiles[row, :, 1][~mask].max() == 0 and tiles[row, :, 1][mask].max() == 1
        assert tiles[row, :, 3][mask].unique().numel() == 1  # the constant depth is flat
    assert torch.equal(data.depth, depth_before)  # drawing leaves the evaluation set alone
    table = format_table({"constant depth": constant})
    assert "head AbsRel" in table and "head δ<1.05" in table and "constant depth" in table
    check_disjoint_seeds(data.seeds, range(0, 64))
    with pytest.raises(ValueError, match="overlap"):
        check_disjoint_seeds(data.seeds, range(EVAL_SEED, EVAL_SEED + 1))


# Learning.
# The short run trains on heads with the renderer's default motion (they turn as well as translate): its first
# few dozen steps reliably learn head depth, which is what this test checks. configs/synthetic-depth.yaml itself
# uses translation-dominant motion, on which longer runs keep improving (docs/depth-quality.md).
TRAIN_ROOT = "synthetic://num_clips=16,num_frames=12,fps=5,seed=0"
TRAIN_STEPS = 50


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A short depth-stage run on synthetic clips through the CLI (config synthetic-depth.yaml)."""
    log_dir = tmp_path_factory.mktemp("synthetic-depth")
    overrides = [f"dataset_params.root_dir={TRAIN_ROOT}", f"depth_train_params.num_steps={TRAIN_STEPS}",
                 f"train_params.checkpoint_every={TRAIN_STEPS}", "train_params.image_every=1000",
                 "train_params.log_every=10"]
    arguments = ["--config", config_path("synthetic-depth.yaml"), "--log_dir", str(log_dir)]
    for override in overrides:
        arguments += ["--set", override]
    assert train_main(arguments) == 0
    return log_dir


def test_short_depth_run_learns_head_geometry(short_run):
    """After a few dozen steps the network's head depth is clearly better than the untrained network's and a
    constant depth on held-out clips (AbsRel after per-image median scaling, head pixels)."""
    records = [json.loads(line) for line in open(os.path.join(short_run, "stats.jsonl"))]
    assert records[-1]["step"] == TRAIN_STEPS and all(torch.isfinite(torch.tensor(r["Loss/photometric"]))
                                                      for r in records)
    model, config = load_depth_model(short_run / "checkpoints")
    check_disjoint_seeds(list(range(EVAL_SEED, EVAL_SEED + 16)), training_seeds(config))
    data = render_evaluation_set(num_clips=16, frames_per_clip=2, size=SIZE, motion=training_motion(config))
    results = compare_depth(model, config, data)
    print("\n" + format_table(results))
    trained: DepthErrors = results["trained network"]["head"]
    assert relative_improvement(trained, results["constant depth"]["head"]) > 0.1, format_table(results)
    assert relative_improvement(trained, results["untrained network"]["head"]) > 0.15, format_table(results)
    # The official-layout depth folder the run exported holds the same network.
    folder_model, _ = load_depth_model(short_run / "depth")
    frames = data.frames[:2]
    assert torch.allclose(folder_model.depth(frames), model.depth(frames))


def test_eval_depth_script_report_figure_and_errors(short_run, tmp_path, capsys):
    script = load_script("eval_depth")
    report_path, figure_path = tmp_path / "eval" / "report.json", tmp_path / "depth.png"
    arguments = ["--checkpoint", str(short_run / "depth"), "--num_clips", "2", "--frames_per_clip", "2"]
    assert script.main(arguments + ["--output", str(report_path), "--figure", str(figure_path)]) == 0
    printed = capsys.readouterr().out
    assert "| trained network |" in printed and "head δ<1.05" in printed
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {"constant depth", "untrained network", "trained network"}
    assert report["evaluation"]["frames"] == 4 and report["evaluation"]["motion"]["max_yaw_degrees"] == 30
    assert set(report["results"]["trained network"]["head"]) >= {"abs_rel", "rmse", "delta_1", "delta_tight"}
    figure = read_image_uint8(figure_path)
    assert figure.shape == (2 * SIZE, 5 * SIZE, 3)  # 2 clips; frame, truth, constant, untrained, trained
    # Held-out seeds that overlap the training clips, and a bad count, are refused with a message.
    assert script.main(arguments + ["--seed", "3", "--output", str(tmp_path / "x.json")]) == 1
    assert "overlap the training clips" in capsys.readouterr().err
    assert script.main(arguments[:2] + ["--num_clips", "0"]) == 1
    assert "--num_clips must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_gan_stage_runs_on_synthetic_clips_with_the_trained_depth(short_run, tmp_path):
    """configs/synthetic-gan.yaml: stage 2 on synthetic pairs, the stage-1 depth folder loaded and kept frozen."""
    log_dir = tmp_path / "synthetic-gan"
    overrides = [f"model_params.depth_params.checkpoint_dir={short_run / 'depth'}", "train_params.num_steps=2",
                 "train_params.batch_size=2", "train_params.log_every=1", "train_params.checkpoint_every=2",
                 "dataset_params.root_dir=synthetic://num_clips=4,num_frames=8,fps=5,seed=0"]
    arguments = ["--config", config_path("synthetic-gan.yaml"), "--log_dir", str(log_dir)]
    for override in overrides:
        arguments += ["--set", override]
    assert train_main(arguments) == 0
    records = [json.loads(line) for line in open(log_dir / "stats.jsonl")]
    assert [record["step"] for record in records] == [1, 2] and "Loss/perceptual" in records[0]
    assert all(math.isfinite(value) for record in records for key, value in record.items() if key.startswith("Loss"))
    from dagan.model import DaGAN
    trained = DaGAN.from_checkpoint(log_dir / "checkpoints" / "00000002.pt")
    depth_model, _ = load_depth_model(short_run / "depth")
    for name in ("depth_encoder", "depth_decoder"):
        for key, value in depth_model.network_state_dicts()[name].items():
            assert torch.equal(trained.network_state_dicts()[name][key], value), (name, key)
