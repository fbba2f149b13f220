"""Tar shards: writing (resumable, verified), bit-identical samples, per-rank shards, exact resume, broken data."""
from __future__ import annotations

import io
import itertools
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from torch.utils.data import DataLoader

from conftest import load_script
from dagan.config import AugmentationParams, JitterParams
from dagan.data import DatasetRepeater, DepthTripletDataset, FramesDataset, ShardSettings, make_sampler, make_shards
from dagan.data.shards import ShardError, load_index, read_range, verify_shards
from dagan.io import VideoWriter, write_png

SIZE = 64
CLIP_FRAMES = 5
SHAPE = (SIZE, SIZE, 3)
NO_VGG = "train_params.loss_weights.perceptual=[0, 0, 0, 0, 0]"  # VGG19 is most of a tiny step's time


def clip_frames(clip: int) -> list[np.ndarray]:
    """Real image content: 64x64 windows of skimage's astronaut, moving a little from frame to frame."""
    astronaut = skimage.data.astronaut()  # (512, 512, 3) uint8
    return [np.ascontiguousarray(astronaut[40 * clip + 3 * i:40 * clip + 3 * i + SIZE, 150 + 5 * i:150 + 5 * i + SIZE])
            for i in range(CLIP_FRAMES)]


def make_root(root: Path) -> Path:
    """train: 8 clips of 4 identities (7 PNG frame folders, 1 mp4); test: 2 frame folders."""
    for clip in range(10):
        split = "train" if clip < 8 else "test"
        name = f"id{clip % 4:03d}#v{clip}#0001#0005"
        if clip == 3:
            (root / split).mkdir(parents=True, exist_ok=True)
            with VideoWriter(root / split / f"{name}.mp4", fps=10) as writer:
                for frame in clip_frames(clip):
                    writer.write(frame)
            continue
        (root / split / f"{name}.mp4").mkdir(parents=True)
        for index, frame in enumerate(clip_frames(clip)):
            write_png(root / split / f"{name}.mp4" / f"{index:06d}.png", frame)
    return root


def two_clip_shards(root: Path) -> int:
    """A shard size that puts two clips of ``root`` in each shard."""
    frame_bytes = np.mean([path.stat().st_size for path in (root / "train").glob("*/*.png")])
    return int(2.5 * CLIP_FRAMES * (frame_bytes + 1024))


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("vox"))


@pytest.fixture(scope="module")
def png_index(dataset_root, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("shards")
    make_shards(dataset_root, output, ShardSettings("png", shard_bytes=two_clip_shards(dataset_root)))
    return output / "index.json"


def augmentation() -> AugmentationParams:
    """Flips on, so the same random draws must come out of both formats; jitter (a pure function of the frames
    and the draws, slow on a loaded CPU) off."""
    return AugmentationParams(jitter_param=JitterParams(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0))


def assert_same_samples(first, second, keys) -> None:
    for key in keys:
        a, b = first.sample(key), second.sample(key)
        assert a["name"] == b["name"], key
        for name in a:
            if name != "name":
                assert torch.equal(a[name], b[name]), (key, name)


def test_png_shards_give_bit_identical_samples(dataset_root, png_index):
    index = load_index(png_index)
    assert len(index.split_shards("train")) == 4 and len(index.split_shards("test")) == 1
    for dataset_class in (FramesDataset, DepthTripletDataset):
        for id_sampling in (False, True):
            folders = dataset_class(dataset_root, SHAPE, id_sampling, augmentation_params=augmentation(), seed=5)
            shards = dataset_class(png_index, SHAPE, id_sampling, augmentation_params=augmentation(), seed=5,
                                   format="shards")
            assert len(shards) == len(folders) == (4 if id_sampling else 8)
            assert_same_samples(folders, shards, range(len(folders) + 2))
    test_folders = FramesDataset(dataset_root, SHAPE, is_train=False)
    test_shards = FramesDataset(png_index, SHAPE, is_train=False, format="shards")
    assert_same_samples(test_folders, test_shards, range(2))


def test_shard_members_are_the_frame_files(dataset_root, png_index, tmp_path):
    """``tar xf`` of a shard gives the frame folders back, byte for byte for PNG sources; every member is a plain
    file under a relative path (what ``extractall(filter="data")`` demands; the filter itself needs Python >= 3.11.4
    or 3.10.12, so the members are written by hand here, which also runs on Debian 12's Python 3.11.2)."""
    import tarfile
    from pathlib import PurePosixPath

    shard = load_index(png_index).shards[load_index(png_index).split_shards("train")[0]]
    with tarfile.open(shard.location) as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            assert member.isfile() and not name.is_absolute() and ".." not in name.parts, member.name
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(tar.extractfile(member).read())
    for name, num_frames, _, _ in shard.clips:
        extracted = sorted((tmp_path / name).glob("*.png"))
        assert len(extracted) == num_frames == CLIP_FRAMES
        source = dataset_root / "train" / name
        if source.is_dir():
            assert [path.read_bytes() for path in extracted] == [(source / path.name).read_bytes()
                                                                 for path in extracted]


def test_jpeg_and_mp4_shards(dataset_root, tmp_path):
    jpeg = tmp_path / "jpeg"
    make_shards(dataset_root, jpeg, ShardSettings("jpeg", jpeg_quality=90, shard_bytes=10 ** 9))
    folders = FramesDataset(dataset_root, SHAPE, False, augmentation_params=augmentation(), seed=1)
    shards = FramesDataset(jpeg / "index.json", SHAPE, False, augmentation_params=augmentation(), seed=1,
                           format="shards")
    for key in range(8):
        a, b = folders.sample(key), shards.sample(key)
        assert a["name"] == b["name"] and 0 < float((a["source"] - b["source"]).abs().mean()) < 0.03
    with pytest.raises(ShardError, match="frame folder"):  # mp4 keeps video files as they are: no frame folders
        make_shards(dataset_root, tmp_path / "refused", ShardSettings("mp4"))
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in (3, 9):
        with VideoWriter(videos / f"id{clip:03d}#v#1#2.mp4", fps=10) as writer:
            for frame in clip_frames(clip):
                writer.write(frame)
    make_shards(videos, tmp_path / "mp4", ShardSettings("mp4"))
    folders = DepthTripletDataset(videos, SHAPE, augmentation_params=augmentation(), seed=2)
    shards = DepthTripletDataset(tmp_path / "mp4" / "index.json", SHAPE, augmentation_params=augmentation(), seed=2,
                                 format="shards")
    assert_same_samples(folders, shards, range(4))


def shards_dataset(index: Path, **options) -> FramesDataset:
    return FramesDataset(index, SHAPE, augmentation_params=augmentation(), format="shards", **options)


@pytest.mark.parametrize("id_sampling", [False, True])
def test_ranks_read_disjoint_shards_that_cover_each_pass(png_index, id_sampling):
    dataset = shards_dataset(png_index, id_sampling=id_sampling, seed=3, shuffle_buffer=3)

    def shard_of_key(key: int, pass_index: int) -> int:
        return dataset.store.items[dataset.planned_videos(pass_index)[key % len(dataset)]].shard

    for world_size in (1, 2, 3):
        for pass_index in (0, 1):
            samplers = [make_sampler(dataset, 3, rank, world_size, block_size=1) for rank in range(world_size)]
            keys = [sampler.pass_keys(pass_index) for sampler in samplers]
            every = np.concatenate(keys)
            assert sorted(every) == list(range(pass_index * len(dataset), (pass_index + 1) * len(dataset)))
            assert max(map(len, keys)) - min(map(len, keys)) <= 1  # equal steps per rank
            if world_size == 2 and not id_sampling:  # 4 shards of 2 clips: nothing to balance
                shards = [{shard_of_key(key, pass_index) for key in rank_keys} for rank_keys in keys]
                assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]
    first, second = (make_sampler(dataset, 3, 0, 1).pass_keys(p) % len(dataset) for p in (0, 1))
    assert list(first) != list(second)  # shard order and buffer are drawn per pass
    with pytest.raises(ValueError, match="shard"):
        make_sampler(dataset, 3, 0, 5)  # 4 shards cannot feed 5 ranks


def test_resume_mid_epoch_continues_the_same_samples(png_index):
    """Two ranks, 2 samples per rank and step, resumed at step 3 (mid-pass), with and without workers."""
    dataset = DatasetRepeater(shards_dataset(png_index, id_sampling=False, seed=7, shuffle_buffer=2), 2)

    def batches(rank: int, num_workers: int, start_step: int, count: int) -> list[dict]:
        sampler = make_sampler(dataset, 7, rank, 2, block_size=2)
        sampler.set_start(start_step * 4)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=num_workers, drop_last=True)
        return list(itertools.islice(iter(loader), count))

    straight = batches(1, 0, 0, 6)
    resumed = batches(1, 2, 3, 3)
    for expected, got in zip(straight[3:], resumed):
        assert expected["name"] == got["name"]
        assert torch.equal(expected["source"], got["source"]) and torch.equal(expected["driving"], got["driving"])
    names = [name for batch in straight[:2] + batches(0, 0, 0, 2) for name in batch["name"]]
    assert sorted(names) == sorted(item.name for item in dataset.dataset.videos)  # steps 0-1: one pass, 2 ranks


def copy_index(index: Path, target: Path) -> Path:
    shutil.copytree(index.parent, target)
    return target / "index.json"


def test_broken_sample_and_missing_shard_are_skipped_and_counted(png_index, tmp_path):
    index_path = copy_index(png_index, tmp_path / "shards")
    index = load_index(index_path)
    train = index.split_shards("train")
    Path(index.shards[train[0]].location).unlink()  # a lost shard: its 2 clips
    broken_shard = index.shards[train[1]]
    name, _, offset, size = broken_shard.clips[0]
    frame_offset, frame_size = json.loads(read_range(broken_shard.location, offset, size))[2]
    with open(broken_shard.location, "r+b") as handle:  # one corrupt frame in another shard
        handle.seek(frame_offset)
        handle.write(b"\0" * frame_size)
    report = verify_shards(index_path, decode="all")
    assert len(report.errors) == 2 and "missing" in report.errors[0] and "SHA-256" in report.errors[1]
    dataset = shards_dataset(index_path, id_sampling=False, seed=0)
    with pytest.warns(UserWarning, match="skipping unusable video"):
        samples = [dataset.sample(key) for key in range(3 * len(dataset))]
    assert len(samples) == 24 and all(sample["source"].shape == (3, SIZE, SIZE) for sample in samples)
    lost = {clip[0] for clip in index.shards[train[0]].clips}
    assert {skipped for skipped, _ in dataset.skipped} <= lost | {name}
    assert lost <= {skipped for skipped, _ in dataset.skipped}
    assert not {sample["name"] for sample in samples} & lost


def test_writing_resumes_and_refuses_other_settings(dataset_root, png_index, tmp_path):
    index_path = copy_index(png_index, tmp_path / "shards")
    original = {path.name: path.read_bytes() for path in index_path.parent.glob("*.tar")}
    victim = sorted(original)[1]
    (index_path.parent / victim).write_bytes(original[victim][:1000])  # as if killed while writing
    settings = ShardSettings("png", shard_bytes=two_clip_shards(dataset_root))
    result = make_shards(dataset_root, index_path.parent, settings)
    assert (result["written"], result["reused"]) == (1, len(original) - 1)
    assert {path.name: path.read_bytes() for path in index_path.parent.glob("*.tar")} == original
    assert json.loads(index_path.read_text()) == json.loads(png_index.read_text())
    with pytest.raises(ShardError, match="another --output"):
        make_shards(dataset_root, index_path.parent, ShardSettings("jpeg", shard_bytes=settings.shard_bytes))


class RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that honours single ``Range: bytes=a-b`` requests (Python's does not)."""

    def send_head(self):
        header = self.headers.get("Range")
        if not header:
            return super().send_head()
        start, end = (int(value) for value in header.removeprefix("bytes=").split("-"))
        data = Path(self.translate_path(self.path)).read_bytes()[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)

    def log_message(self, *args):
        pass


def test_shards_over_http(png_index, dataset_root):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(png_index.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.json"
        remote = shards_dataset(url, id_sampling=True, seed=4)
        assert_same_samples(shards_dataset(png_index, id_sampling=True, seed=4), remote, range(4))
    finally:
        server.shutdown()


def test_make_shards_script(dataset_root, tmp_path, capsys):
    script = load_script("make_shards")
    assert script.main(["--root", str(dataset_root), "--out", str(tmp_path / "out"), "--shard_size", "100KiB",
                        "--workers", "2", "--encoding", "jpeg", "--no_progress"]) == 0
    output = capsys.readouterr().out
    assert "0 kept from an earlier run" in output and "0 problem(s)" in output
    assert script.main(["--root", str(dataset_root), "--out", str(tmp_path / "out"), "--shard_size", "100KiB",
                        "--encoding", "jpeg", "--no_progress", "--no_verify"]) == 0
    assert "0 shard(s) written" in capsys.readouterr().out
    (tmp_path / "out" / "test-000000.tar").unlink()
    assert script.main(["--verify", str(tmp_path / "out" / "index.json"), "--no_progress"]) == 1
    assert "missing" in capsys.readouterr().err
    assert script.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no_progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_training_from_shards_resumes_bit_identically(png_index, tmp_path):
    """The bit-exact resume test of the folder datasets (test_training), with dataset_params.format: shards: two
    steps straight, then step 2 again from the straight run's step-1 checkpoint (three steps in all)."""
    import test_training as training
    from dagan.checkpoint import export_official_depth, read_file
    from dagan.config import load_config
    from dagan.model import DaGAN

    from conftest import config_path
    torch.manual_seed(0)
    export_official_depth(DaGAN(load_config(config_path("tiny.yaml"))), tmp_path / "depth")
    overrides = [*training.gan_overrides(str(tmp_path / "depth"), 2, "train_params.checkpoint_every=1", NO_VGG),
                 "dataset_params.format=shards", f"dataset_params.root_dir={png_index}", "train_params.image_every=100"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert training.run_train(straight, overrides) == 0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copyfile(straight / "checkpoints" / "00000001.pt", resumed / "checkpoints" / "00000001.pt")
    assert training.run_train(resumed, overrides, resume="auto") == 0
    a, b = (read_file(run / "checkpoints" / "00000002.pt")["networks"] for run in (straight, resumed))
    for network in ("generator", "kp_detector", "discriminator"):
        for key, value in a[network].items():
            assert torch.equal(value, b[network][key]), f"{network}.{key}"


def test_format_fields_are_validated():
    from dagan.config import ConfigError, load_config

    from conftest import config_path
    assert load_config(config_path("tiny.yaml")).dataset_params.format == "folders"
    with pytest.raises(ConfigError, match="dataset_params.format"):
        load_config(config_path("tiny.yaml"), ["dataset_params.format=zip"])
    with pytest.raises(ConfigError, match="dataset_params.shard_shuffle_buffer"):
        load_config(config_path("tiny.yaml"), ["dataset_params.shard_shuffle_buffer=0"])
    with pytest.raises(ShardError, match="could not be read"):
        load_index(Path(config_path("tiny.yaml")))  # a dataset folder or any other file given as the index


def test_benchmark_data_script(dataset_root, tmp_path, capsys):
    script = load_script("benchmark_data")
    video = dataset_root / "train" / "id003#v3#0001#0005.mp4"
    assert script.main(["--video", str(video), "--clips", "2", "--samples", "2", "--frame_size", str(SIZE),
                        "--kinds", "pairs", "--output", str(tmp_path / "bench.json")]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [row["format"] for row in results] == ["folders", "videos", "shards-png", "shards-jpeg", "shards-mp4"]
    assert all(row["decoded_per_cpu_s"] > 0 and row["bytes_per_sample"] > 0 for row in results)
    assert "shards-jpeg" in capsys.readouterr().out
