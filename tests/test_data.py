"""Training data: layout discovery, pair/triplet sampling, augmentation, determinism, sampling, bad videos."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dagan.config import AugmentationParams, FlipParams, JitterParams, load_config
from dagan.data import (
    AugmentationDraw,
    DatasetError,
    DatasetRepeater,
    DepthTripletDataset,
    FramesDataset,
    ResumableSampler,
    VideoStore,
    adjust_hue,
    apply_augmentation,
    color_jitter,
    draw_augmentation,
    hsv_to_rgb,
    make_sampler,
    rgb_to_hsv,
)
from dagan.io import VideoWriter, write_png

SIZE = 64
NO_FLIP = FlipParams(horizontal_flip=False, time_flip=False)
NO_JITTER = JitterParams(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


# Test data: frame i has red = 10 * i + 5 everywhere, green rising left to right, blue rising top to bottom.
def make_frame(index: int, size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8 frame that encodes ``index`` in its red channel."""
    ramp = np.linspace(0, 250, size).astype(np.uint8)
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[..., 0] = 10 * index + 5
    frame[..., 1] = ramp[None, :]
    frame[..., 2] = ramp[:, None]
    return frame


def frame_index(frame: torch.Tensor) -> int:
    """Decode the index of a ``(3, H, W)`` frame written by ``make_frame`` (no colour jitter)."""
    return int(round((float(frame[0].mean()) * 255 - 5) / 10))


def make_frame_folder(path: Path, num_frames: int) -> Path:
    path.mkdir(parents=True)
    for index in range(num_frames):
        write_png(path / f"frame{index}.png", make_frame(index))  # natural order: frame2 < frame10
    return path


def make_mp4(path: Path, num_frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps=10) as writer:
        for index in range(num_frames):
            writer.write(make_frame(index))
    return path


@pytest.fixture(scope="module")
def vox_root(tmp_path_factory) -> Path:
    """root/train: 2 frame folders of id001, an mp4 of id002; root/test: one frame folder."""
    root = tmp_path_factory.mktemp("vox")
    make_frame_folder(root / "train" / "id001#abc#0001#0012.mp4", 12)
    make_frame_folder(root / "train" / "id001#def#0001#0008.mp4", 8)
    make_mp4(root / "train" / "id002#ghi#0001#0010.mp4", 10)
    make_frame_folder(root / "test" / "id003#jkl#0001#0006.mp4", 6)
    (root / "train" / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory) -> Path:
    """A flat folder with frame folders only (lossless): three identities."""
    root = tmp_path_factory.mktemp("frames")
    make_frame_folder(root / "id001#a#1#2.mp4", 20)
    make_frame_folder(root / "id002#b#1#2.mp4", 20)
    make_frame_folder(root / "id003#c#1#2.mp4", 20)
    return root


def augmentation(flip: FlipParams = NO_FLIP, jitter: JitterParams = NO_JITTER) -> AugmentationParams:
    return AugmentationParams(flip_param=flip, jitter_param=jitter)


def pair_indices(sample: dict) -> tuple[int, int]:
    return frame_index(sample["source"]), frame_index(sample["driving"])


# Layout and discovery.
def test_voxceleb_layout_and_splits(vox_root):
    train = VideoStore(vox_root, "train", (SIZE, SIZE))
    assert train.layout == "splits" and train.split_dir == vox_root / "train"
    assert [(item.name, item.kind, item.num_frames) for item in train.items] == [
        ("id001#abc#0001#0012.mp4", "frames", 12),
        ("id001#def#0001#0008.mp4", "frames", 8),
        ("id002#ghi#0001#0010.mp4", "video", 10),
    ]
    assert [item.identity for item in train.items] == ["id001", "id001", "id002"]
    test = VideoStore(vox_root, "test", (SIZE, SIZE))
    assert [item.name for item in test.items] == ["id003#jkl#0001#0006.mp4"]
    clip = train.open_clip(2)  # the mp4, decoded
    frames = clip.frames([0, 9])
    assert clip.num_frames == 10 and frames.shape == (2, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert abs(frame_index(frames[1]) - 9) <= 0.2 * 9  # lossy H.264: the red level is approximately kept


def test_flat_folder_is_the_train_split(vox_root, tmp_path):
    shutil.copy(vox_root / "train" / "id002#ghi#0001#0010.mp4", tmp_path / "clip.mp4")
    shutil.copytree(vox_root / "test" / "id003#jkl#0001#0006.mp4", tmp_path / "folder")
    write_png(tmp_path / "source.png", make_frame(0))  # a stray image is not a video
    (tmp_path / "README.md").write_text("samples")
    dataset = FramesDataset(tmp_path, frame_shape=(32, 32, 3), id_sampling=False)
    assert dataset.store.layout == "flat"
    assert [video.name for video in dataset.videos] == ["clip.mp4", "folder"]
    sample = dataset[0]
    assert sample["source"].shape == (3, 32, 32) and sample["name"] == "clip.mp4"  # resized to frame_shape
    assert 0.0 <= float(sample["source"].min()) and float(sample["source"].max()) <= 1.0
    assert len(FramesDataset(tmp_path, frame_shape=(32, 32, 3), is_train=False)) == 2


def test_id_sampling_gives_one_item_per_identity(vox_root):
    dataset = FramesDataset(vox_root, frame_shape=(SIZE, SIZE, 3), id_sampling=True, seed=0)
    assert len(dataset) == 2 and dataset.item_names == ["id001", "id002"]
    names = {dataset.sample(key)["name"] for key in range(0, 20, 2)}  # item 0 of ten passes
    assert names == {"id001#abc#0001#0012.mp4", "id001#def#0001#0008.mp4"}
    assert len(FramesDataset(vox_root, frame_shape=(SIZE, SIZE, 3), id_sampling=False)) == 3


def test_source_before_driving_without_augmentation(frames_root):
    dataset = FramesDataset(frames_root, frame_shape=(SIZE, SIZE, 3), id_sampling=True, seed=3)
    pairs = [pair_indices(dataset.sample(key)) for key in range(60)]
    assert all(source <= driving for source, driving in pairs)
    assert sum(source < driving for source, driving in pairs) > 40
    sample = dataset[0]
    expected = torch.from_numpy(make_frame(frame_index(sample["source"]))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample["source"], expected)


def test_test_split_pairs_are_fixed(vox_root):
    dataset = FramesDataset(vox_root, frame_shape=(SIZE, SIZE, 3), is_train=False,
                            augmentation_params=augmentation(FlipParams(), JitterParams()))
    first, second = dataset[0], dataset[0]
    assert pair_indices(first) == (0, 3)  # frame 0 and frame num_frames // 2, never augmented
    assert torch.equal(first["driving"], second["driving"])


# Augmentation.
def test_time_flip_swaps_and_skips_horizontal_flip(frames_root):
    frames = torch.stack([torch.from_numpy(make_frame(i)).permute(2, 0, 1).float() / 255 for i in (2, 7)])
    flipped = apply_augmentation(frames, AugmentationDraw(time_flip=True, horizontal_flip=True))
    assert torch.equal(flipped, frames.flip(0))  # reversed in time, not mirrored
    params = augmentation(FlipParams(horizontal_flip=True, time_flip=True))
    draws = [draw_augmentation(params, np.random.default_rng(seed)) for seed in range(200)]
    assert not any(draw.time_flip and draw.horizontal_flip for draw in draws)
    assert 60 < sum(draw.time_flip for draw in draws) < 140
    dataset = FramesDataset(frames_root, frame_shape=(SIZE, SIZE, 3), seed=0,
                            augmentation_params=augmentation(FlipParams(horizontal_flip=False, time_flip=True)))
    pairs = [pair_indices(dataset.sample(key)) for key in range(40)]
    assert any(source > driving for source, driving in pairs) and any(source < driving for source, driving in pairs)


def test_horizontal_flip_mirrors_both_frames(frames_root):
    kwargs = dict(root_dir=frames_root, frame_shape=(SIZE, SIZE, 3), seed=5)
    plain = FramesDataset(**kwargs)
    flipping = FramesDataset(**kwargs, augmentation_params=augmentation(FlipParams(True, False)))
    mirrored = 0
    for key in range(20):
        reference, sample = plain.sample(key), flipping.sample(key)
        if torch.equal(sample["source"], reference["source"].flip(-1)):
            assert torch.equal(sample["driving"], reference["driving"].flip(-1))
            assert sample["source"][1, 0, 0] > sample["source"][1, 0, -1]  # green now falls left to right
            mirrored += 1
        else:
            assert torch.equal(sample["source"], reference["source"])
            assert torch.equal(sample["driving"], reference["driving"])
    assert 0 < mirrored < 20


def test_jitter_is_shared_by_the_pair_and_changes_colours():
    frame = torch.from_numpy(make_frame(9)).permute(2, 0, 1).float() / 255  # (3, H, W)
    params = augmentation(jitter=JitterParams(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.2))
    draw = draw_augmentation(params, np.random.default_rng(1))
    assert draw.hue != 0.0 and draw.brightness != 1.0 and sorted(draw.order) == sorted(set(draw.order))
    pair = apply_augmentation(torch.stack([frame, frame]), draw)  # (2, 3, H, W)
    assert torch.equal(pair[0], pair[1])
    assert (pair[0] - frame).abs().max() > 0.05
    assert 0.0 <= float(pair.min()) and float(pair.max()) <= 1.0
    assert torch.equal(color_jitter(frame, AugmentationDraw()), frame)  # neutral factors: identity


def test_hue_rotation():
    colours = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(colours)), colours, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 2, 2),
                               atol=1e-5, rtol=0)


# Determinism and sampling.
def test_samples_depend_only_on_seed_epoch_and_index(frames_root):
    params = augmentation(FlipParams(), JitterParams(0.2, 0.2, 0.2, 0.1))
    make = lambda seed: FramesDataset(frames_root, frame_shape=(SIZE, SIZE, 3), seed=seed,  # noqa: E731
                                      augmentation_params=params)
    first, second = make(0), make(0)
    for index in range(3):
        assert all(torch.equal(first[index][key], second[index][key]) for key in ("source", "driving"))
    other_seed = make(1)
    assert not torch.equal(first[1]["source"], other_seed[1]["source"])
    reference = first[1]["source"]
    first.set_epoch(1)
    assert not torch.equal(first[1]["source"], reference)
    assert torch.equal(first[1]["source"], second[len(second) + 1]["source"])  # epoch 1 = the next pass's key


def test_sampler_resumes_and_splits_across_ranks():
    full = list(itertools.islice(iter(ResumableSampler(7, seed=3)), 30))
    assert sorted(key % 7 for key in full[:7]) == list(range(7))  # each pass is a permutation
    assert all(7 <= key < 14 for key in full[7:14])  # keys of pass 1 carry the pass
    assert full[:7] != [key - 7 for key in full[7:14]]  # reshuffled per pass
    resumed = ResumableSampler(7, seed=3)
    resumed.set_start(12)
    assert list(itertools.islice(iter(resumed), 18)) == full[12:]
    ranks = [ResumableSampler(7, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_start(4)
    rank0, rank1 = (list(itertools.islice(iter(sampler), 13)) for sampler in ranks)
    assert rank0 == full[4::2] and rank1 == full[5::2]
    with pytest.raises(ValueError, match="multiple of world_size"):
        ranks[0].set_start(3)
    # Blocks: each rank takes a contiguous run of block_size positions of every world_size x block_size block.
    blocks = [ResumableSampler(7, seed=3, rank=rank, world_size=2, block_size=3) for rank in (0, 1)]
    for sampler in blocks:
        sampler.set_start(6)
    block0, block1 = (list(itertools.islice(iter(sampler), 6)) for sampler in blocks)
    assert block0 == full[6:9] + full[12:15] and block1 == full[9:12] + full[15:18]
    with pytest.raises(ValueError, match="multiple of world_size"):
        blocks[0].set_start(4)


def test_dataloader_batches_do_not_depend_on_workers_or_resume(frames_root):
    dataset = DatasetRepeater(FramesDataset(frames_root, frame_shape=(SIZE, SIZE, 3), seed=0,
                                            augmentation_params=augmentation(FlipParams(), JitterParams())), 2)
    assert len(dataset) == 6

    def batches(num_workers: int, start_step: int, count: int) -> list[dict]:
        sampler = make_sampler(dataset, seed=11)
        sampler.set_start(start_step * 4)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=num_workers, drop_last=True)
        return list(itertools.islice(iter(loader), count))

    serial, parallel, resumed = batches(0, 0, 3), batches(2, 0, 3), batches(2, 1, 2)
    for expected, got in zip(serial, parallel):
        assert torch.equal(expected["source"], got["source"]) and torch.equal(expected["driving"], got["driving"])
        assert expected["name"] == got["name"]
    for expected, got in zip(serial[1:], resumed):
        assert torch.equal(expected["driving"], got["driving"])
    assert serial[0]["source"].shape == (4, 3, SIZE, SIZE)


def test_depth_triplets_are_consecutive_frames(frames_root):
    for stride in (1, 3):
        dataset = DepthTripletDataset(frames_root, frame_shape=(SIZE, SIZE, 3), seed=0, stride=stride,
                                      augmentation_params=augmentation(FlipParams(), NO_JITTER))
        for key in range(12):
            sample = dataset.sample(key)
            previous, target, following = (frame_index(sample[name]) for name in ("previous", "target", "next"))
            assert abs(target - previous) == stride and following - target == target - previous
            assert sample["target"].shape == (3, SIZE, SIZE)


def test_depth_triplets_skip_short_videos(frames_root, tmp_path):
    make_frame_folder(tmp_path / "long", 10)
    make_frame_folder(tmp_path / "short", 2)
    with pytest.warns(UserWarning, match="short"):
        dataset = DepthTripletDataset(tmp_path, frame_shape=(SIZE, SIZE, 3))
    assert [video.name for video in dataset.videos] == ["long"] and dataset.skipped[0][0] == "short"


# Errors and unreadable videos.
def test_bad_roots_fail_at_construction(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DatasetError, match="does not exist") as error:
        FramesDataset(missing)
    assert str(missing) in str(error.value) and "train" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty") as error:
        FramesDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(error.value)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("no videos here")
    with pytest.raises(DatasetError, match="no videos") as error:
        FramesDataset(tmp_path / "docs")
    assert str(tmp_path / "docs") in str(error.value)
    make_frame_folder(tmp_path / "only_train" / "train" / "clip", 3)
    with pytest.raises(DatasetError, match="no 'test/' folder"):
        FramesDataset(tmp_path / "only_train", is_train=False)


def test_corrupt_and_empty_videos_are_skipped(frames_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(frames_root, root / "train")
    (root / "train" / "id004#bad#1#2.mp4").write_bytes(b"\x00garbage, not an mp4" * 50)
    (root / "train" / "id005#empty#1#2.mp4").mkdir()
    with pytest.warns(UserWarning, match="skipping 2 unusable"):
        dataset = FramesDataset(root, frame_shape=(SIZE, SIZE, 3), id_sampling=False)
    assert len(dataset) == 3 and sorted(name for name, _ in dataset.skipped) == ["id004#bad#1#2.mp4",
                                                                                  "id005#empty#1#2.mp4"]
    assert len(list(dataset)) == 3


def test_unreadable_video_found_while_loading_is_replaced(frames_root, tmp_path):
    shutil.copytree(frames_root, tmp_path, dirs_exist_ok=True)
    (tmp_path / "id000#bad#1#2.mp4").write_bytes(b"\x00garbage" * 100)
    make = lambda: FramesDataset(tmp_path, frame_shape=(SIZE, SIZE, 3), id_sampling=False,  # noqa: E731
                                 probe_videos=False)
    dataset = make()
    assert dataset.videos[0].name == "id000#bad#1#2.mp4" and dataset.videos[0].num_frames is None
    with pytest.warns(UserWarning, match="skipping unusable video 'id000#bad"):
        first = dataset[0]
    assert first["name"] != "id000#bad#1#2.mp4" and len(dataset.skipped) == 1
    assert len(list(dataset)) == 4 and len(dataset.skipped) == 1  # recorded once, never raises
    with pytest.warns(UserWarning):
        again = make()[0]
    assert again["name"] == first["name"] and torch.equal(again["source"], first["source"])


def test_from_config_reads_dataset_params(frames_root):
    config = load_config(overrides=[f"dataset_params.root_dir={frames_root}", "dataset_params.frame_shape=[32, 32, 3]"])
    dataset = FramesDataset.from_config(config.dataset_params, seed=2)
    assert len(dataset) == 3 and dataset[0]["driving"].shape == (3, 32, 32)
    triplets = DepthTripletDataset.from_config(config.dataset_params, stride=2)  # depth_train_params.frame_stride
    assert triplets.stride == 2 and len(triplets) == 3  # id_sampling: 3 identities
