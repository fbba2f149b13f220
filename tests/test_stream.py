"""Streaming datasets on litdata: bit-identical samples, frames read alone, resume across rank counts, corrupt
chunks, object stores on loopback (moto's S3 server, a plain HTTP server), unreachable stores, old tar shards."""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import skimage.data
import torch

from conftest import REPO_ROOT, config_path, load_script
from dagan.config import AugmentationParams, ConfigError, JitterParams, load_config
from dagan.data import DepthTripletDataset, FramesDataset, StreamSettings, make_sampler, make_stream
from dagan.data.stream import StreamError, StreamStore, convert_tar_shards, verify_stream
from dagan.io import VideoWriter, write_png

litdata = pytest.importorskip("litdata")

SIZE = 64
CLIP_FRAMES = 5
SHAPE = (SIZE, SIZE, 3)
NO_VGG = "train_params.loss_weights.perceptual=[0, 0, 0, 0, 0]"  # VGG19 is most of a tiny step's time
AUGMENT = AugmentationParams(jitter_param=JitterParams(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05))


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
        (root / split).mkdir(parents=True, exist_ok=True)
        if clip == 3:
            with VideoWriter(root / split / f"{name}.mp4", fps=10) as writer:
                for frame in clip_frames(clip):
                    writer.write(frame)
            continue
        (root / split / f"{name}.mp4").mkdir()
        for index, frame in enumerate(clip_frames(clip)):
            write_png(root / split / f"{name}.mp4" / f"{index:06d}.png", frame)
    return root


SMALL = StreamSettings("png", chunk_bytes=20_000, part_bytes=60_000)  # several parts and chunks


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def stream_root(dataset_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("stream") / "vox"
    make_stream(dataset_root, output, SMALL, workers=2)
    return output


def pairs(root, fmt="folders", **kwargs):
    return FramesDataset(root, SHAPE, id_sampling=True, augmentation_params=AUGMENT, seed=3, format=fmt, **kwargs)


def triplets(root, fmt="folders", **kwargs):
    return DepthTripletDataset(root, SHAPE, augmentation_params=AUGMENT, seed=5, format=fmt, **kwargs)


def assert_same_samples(a, b, keys):
    for key in keys:
        first, second = a.sample(key), b.sample(key)
        assert first["name"] == second["name"]
        for name, value in first.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, second[name]), f"key {key}: {name}"


def test_png_samples_are_bit_identical_and_read_their_frames_alone(dataset_root, stream_root):
    assert len(json.loads((stream_root / "train" / "index.json").read_text())["chunks"]) > 3
    keys = range(12)  # more than a pass: the second pass's randomness too
    assert_same_samples(pairs(dataset_root), pairs(stream_root, "stream"), keys)
    assert_same_samples(triplets(dataset_root), triplets(stream_root, "stream"), keys)
    test_folders, test_stream = (FramesDataset(root, SHAPE, is_train=False, format=fmt)
                                 for root, fmt in ((dataset_root, "folders"), (stream_root, "stream")))
    assert_same_samples(test_folders, test_stream, range(len(test_folders)))
    dataset = triplets(stream_root, "stream")
    frame_bytes = {path.stat().st_size for path in (dataset_root / "train").glob("*/*.png")}
    for key in range(4):
        before = dataset.store.bytes_read
        dataset.sample(key)
        read = dataset.store.bytes_read - before
        if dataset.store.items[dataset.planned_videos(0)[key]].kind == "frames":
            assert 3 * (min(frame_bytes) + 8) <= read <= 3 * (max(frame_bytes) + 8)  # three frames, not the clip


def test_dataloader_workers_open_their_own_engine(stream_root):
    dataset = pairs(stream_root, "stream")
    dataset.sample(0)  # the parent's engine is open: the workers must not share it
    sampler = make_sampler(dataset, 3, block_size=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2)
    batches = iter(loader)
    keys = iter(make_sampler(dataset, 3, block_size=2))
    for _ in range(3):
        batch = next(batches)
        expected = [dataset.sample(next(keys)) for _ in range(2)]
        assert torch.equal(batch["source"], torch.stack([sample["source"] for sample in expected]))


def test_mp4_clips_are_stored_as_files(dataset_root, tmp_path):
    videos = tmp_path / "videos" / "train"
    videos.mkdir(parents=True)
    shutil.copy(dataset_root / "train" / "id003#v3#0001#0005.mp4", videos)
    make_stream(videos.parent, tmp_path / "mp4", StreamSettings("mp4"))
    store = StreamStore(tmp_path / "mp4", "train", (SIZE, SIZE))
    clip = store.open_clip(0)
    assert clip.num_frames == CLIP_FRAMES
    folder = FramesDataset(videos.parent, SHAPE)
    assert torch.equal(folder.store.open_clip(0).frames([1, 3]), clip.frames([1, 3]))
    assert store.bytes_read == (videos / "id003#v3#0001#0005.mp4").stat().st_size + 8


def test_writing_resumes_and_refuses_another_input(dataset_root, stream_root, tmp_path):
    output = tmp_path / "vox"
    shutil.copytree(stream_root, output)
    (output / "train" / "part-1.json").unlink()  # as if killed before the part was recorded
    result = make_stream(dataset_root, output, SMALL)
    parts = len(list((output / "train").glob("part-*.json"))) + len(list((output / "test").glob("part-*.json")))
    assert (result["written"], result["reused"]) == (1, parts - 1)
    for name in ("index.json", "clips.json"):
        assert (output / "train" / name).read_text() == (stream_root / "train" / name).read_text()
    with pytest.raises(StreamError, match="another --out"):
        make_stream(dataset_root, output, StreamSettings("jpeg", chunk_bytes=20_000, part_bytes=60_000))


def test_ranks_share_each_pass_and_a_restart_with_fewer_ranks_neither_repeats_nor_skips(stream_root):
    dataset = pairs(stream_root, "stream")
    per_rank, steps = 2, 3
    ranks = [iter(make_sampler(dataset, 7, rank, 2, block_size=per_rank)) for rank in range(2)]
    first = [[next(ranks[rank]) for _ in range(per_rank * steps)] for rank in range(2)]
    assert not set(first[0]) & set(first[1])  # disjoint shares
    single = make_sampler(dataset, 7, 0, 1, block_size=2 * per_rank)
    single.set_start(steps * 2 * per_rank)  # the checkpoint's step x the global batch
    later = [key for key, _ in zip(single, range(2 * per_rank * 2))]
    unbroken = iter(make_sampler(dataset, 7, 0, 1, block_size=1))
    stream = [next(unbroken) for _ in range(2 * per_rank * (steps + 2))]
    assert sorted(first[0] + first[1]) == sorted(stream[:2 * per_rank * steps])
    assert later == stream[2 * per_rank * steps:]  # the global stream goes on exactly
    assert sorted(stream[:len(dataset)]) == list(range(len(dataset)))  # a pass covers every item once


RANK_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from dagan.data import FramesDataset, make_sampler

root, start, steps, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world > 1:
    dist.init_process_group("gloo")
dataset = FramesDataset(root, (64, 64, 3), id_sampling=False, seed=3, format="stream")
per_rank = 4 // world  # the global batch stays 4
sampler = make_sampler(dataset, 7, rank, world, block_size=per_rank)
sampler.set_start(start * 4)
loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=1)
names = []
for step, batch in zip(range(steps), loader):
    names.append(batch["name"])
gathered = [None] * world
if world > 1:
    dist.all_gather_object(gathered, names)
    dist.destroy_process_group()
else:
    gathered = [names]
if rank == 0:
    steps_names = [[name for rank_names in gathered for name in rank_names[step]] for step in range(steps)]
    json.dump(steps_names, open(output, "w"))
"""


@pytest.mark.slow
def test_two_gloo_ranks_then_one_continue_the_global_sequence(stream_root, tmp_path):
    """Two ranks (torchrun, gloo) read 3 steps of a global batch of 4, one rank resumes at step 3 for 2 more: the
    names are those of one unbroken process, step by step (a pass of 8 clips: no repeats or gaps within it)."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_backend=c10d", str(script)]
    one = [sys.executable, str(script)]
    for command, start, steps, name in ((two, 0, 3, "two"), (one, 3, 2, "one"), (one, 0, 5, "all")):
        arguments = [str(stream_root), str(start), str(steps), str(tmp_path / f"{name}.json")]
        result = subprocess.run(command + arguments, capture_output=True, text=True, timeout=300, env=environment)
        assert result.returncode == 0, result.stderr[-3000:]
    two, one, unbroken = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("two", "one", "all"))
    assert [sorted(step) for step in two + one] == [sorted(step) for step in unbroken]
    first_pass = [name for step in unbroken[:2] for name in step]
    assert len(set(first_pass)) == len(first_pass) == 8  # steps 0-1 are the first pass over the 8 clips


def flip_byte_of_frame(root: Path, clip_name: str) -> None:
    """Corrupt one byte inside the stored bytes of frame 2 of ``clip_name`` (a damaged chunk)."""
    table = json.loads((root / "train" / "clips.json").read_text())
    first = next(row[3] for row in table["clips"] if row[0] == clip_name)
    store = StreamStore(root, "train", (SIZE, SIZE))
    data = store.fetch(first + 2, "frame")
    for chunk in (root / "train").glob("chunk-*.bin"):
        content = chunk.read_bytes()
        position = content.find(data)
        if position >= 0:
            chunk.write_bytes(content[:position + 100] + bytes([content[position + 100] ^ 0xFF]) +
                              content[position + 101:])
            return
    raise AssertionError("frame not found in any chunk")


def test_a_corrupt_chunk_is_detected_skipped_and_counted(stream_root, tmp_path):
    root = tmp_path / "vox"
    shutil.copytree(stream_root, root)
    victim = "id001#v1#0001#0005.mp4"
    flip_byte_of_frame(root, victim)
    dataset = FramesDataset(root, SHAPE, id_sampling=False, format="stream")
    assert victim in [item.name for item in dataset.videos]
    with pytest.warns(UserWarning, match="corrupt"):
        for key in range(3 * len(dataset)):  # every clip, three times: frame 2 is drawn at some point
            dataset.sample(key)
    assert [name for name, _ in dataset.skipped] == [victim]
    report = verify_stream(str(root))
    assert len(report.errors) == 1 and "SHA-256 differs" in report.errors[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, server: str, timeout: float = 20.0) -> None:
    """Wait until a server started by a test listens on 127.0.0.1:port."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert time.time() < deadline, f"{server} did not start"
            time.sleep(0.1)


@contextlib.contextmanager
def moto_s3(folders: dict[str, Path]):
    """moto's S3 server on 127.0.0.1 (its address in ``AWS_ENDPOINT_URL`` and test credentials in the environment
    meanwhile) holding each folder of ``{"s3://bucket/prefix": folder}``; stopped on exit."""
    pytest.importorskip("moto")
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    environment = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                   "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        wait_for_port(port, "moto server")
        client = boto3.client("s3")
        for url, folder in folders.items():
            bucket, prefix = url.removeprefix("s3://").split("/", 1)
            if bucket not in [entry["Name"] for entry in client.list_buckets().get("Buckets", [])]:
                client.create_bucket(Bucket=bucket)
            for path in Path(folder).rglob("*"):
                if path.is_file():
                    client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="module")
def s3_store(stream_root):
    """moto's S3 server on 127.0.0.1 holding the dataset under s3://dagan-test/vox; stopped after the module."""
    with moto_s3({"s3://dagan-test/vox": stream_root}):
        yield "s3://dagan-test/vox"


def test_s3_samples_match_the_local_dataset_and_verify(s3_store, stream_root, tmp_path):
    cache = str(tmp_path / "cache")
    remote = triplets(s3_store, "stream", stream_cache_dir=cache, stream_cache_size="1GB")
    assert_same_samples(triplets(stream_root, "stream"), remote, range(6))
    assert not any(Path(cache).rglob("chunk-*.bin"))  # frames were fetched alone, no chunk downloaded
    report = verify_stream(s3_store, decode="none", cache_dir=cache)
    assert report.errors == [] and report.chunks == len(json.loads(
        (stream_root / "train" / "clips.json").read_text())["sha256"]) + len(json.loads(
            (stream_root / "test" / "clips.json").read_text())["sha256"])


@pytest.fixture(scope="module")
def gcs_store(stream_root):
    """gcp-storage-emulator on 127.0.0.1 (``STORAGE_EMULATOR_HOST``, which google-cloud-storage, litdata's gs://
    backend, honours) holding the dataset under gs://dagan-gcs/vox; stopped after the module."""
    pytest.importorskip("gcp_storage_emulator")
    storage = pytest.importorskip("google.cloud.storage")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--in-memory"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, "gcp-storage-emulator")
        bucket = storage.Client(project="test").create_bucket("dagan-gcs")
        for path in stream_root.rglob("*"):
            if path.is_file():
                bucket.blob(f"vox/{path.relative_to(stream_root)}").upload_from_filename(str(path))
        yield "gs://dagan-gcs/vox"
    finally:
        server.terminate()
        server.wait(timeout=10)
        os.environ.pop("STORAGE_EMULATOR_HOST") if saved is None else os.environ.__setitem__(
            "STORAGE_EMULATOR_HOST", saved)


def test_gcs_samples_match_the_local_dataset_and_verify(gcs_store, stream_root, tmp_path, monkeypatch):
    """gs:// through litdata's GCS backend (ranged reads bounded by DAGAN_STREAM_TIMEOUT) against the emulator:
    the same samples as the local dataset, frames read alone, every chunk verified; the metadata size check asks
    the object's metadata first."""
    cache = str(tmp_path / "cache")
    remote = pairs(gcs_store, "stream", stream_cache_dir=cache)
    assert_same_samples(pairs(stream_root, "stream"), remote, range(4))
    assert not any(Path(cache).rglob("chunk-*.bin"))
    report = verify_stream(gcs_store, decode="ends", cache_dir=cache)
    assert report.errors == [] and report.chunks > 3 and report.frames_decoded > 0
    from dagan.data import stream

    monkeypatch.setattr(stream, "MAX_METADATA_BYTES", 10)
    with pytest.raises(StreamError, match="dataset.json' is [0-9]+ bytes, over the 10 allowed"):
        StreamStore(gcs_store, "train")


def test_missing_credentials_and_unreachable_stores_give_one_line(s3_store, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StreamError) as error:
        StreamStore(s3_store, "train")
    assert "cannot read 's3://dagan-test/vox/dataset.json'" in str(error.value) and "\n" not in str(error.value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StreamError, match="AWS_ACCESS_KEY_ID") as error:
        StreamStore(s3_store, "train")
    assert "\n" not in str(error.value)


def test_oversized_metadata_is_refused_before_it_is_read(s3_store, stream_root, monkeypatch):
    """The size of dataset.json, clips.json and litdata's index.json comes from the store's metadata (HEAD) first:
    one over the limit is refused in one line and never downloaded."""
    from dagan.data import stream

    sizes = {name: (stream_root / "train" / name).stat().st_size for name in ("clips.json", "index.json")}
    assert sizes["index.json"] > sizes["clips.json"]
    monkeypatch.setattr(stream, "MAX_METADATA_BYTES", sizes["clips.json"])  # index.json is the one too large
    downloaded, read_remote = [], stream._read_remote
    monkeypatch.setattr(stream, "_read_remote", lambda folder, name, cache: downloaded.append(name) or
                        read_remote(folder, name, cache))
    with pytest.raises(StreamError) as error:
        StreamStore(s3_store, "train")
    assert f"'{s3_store}/train/index.json' is {sizes['index.json']} bytes" in str(error.value)
    assert "it was not read" in str(error.value) and "\n" not in str(error.value)
    assert downloaded == ["dataset.json", "clips.json"]


def test_an_index_that_would_unpickle_is_refused(stream_root, tmp_path):
    root = tmp_path / "vox"
    shutil.copytree(stream_root, root)
    index = json.loads((root / "train" / "index.json").read_text())
    index["config"]["data_format"] = ["pickle", "bytes"]
    (root / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(StreamError, match="pickle, which could run code"):
        StreamStore(root, "train")


class StallingS3Proxy(SimpleHTTPRequestHandler):
    """Passes requests on to moto (``server.moto_port``), except ranged reads of chunks, which it never answers
    (it counts them in ``server.stalls`` and waits for ``server.release``)."""

    def do_GET(self):
        self.forward()

    def do_HEAD(self):
        self.forward()

    def forward(self):
        if "/chunk-" in self.path and self.headers.get("Range"):
            self.server.stalls.append(time.monotonic())
            self.server.release.wait(30)
            return
        connection = http.client.HTTPConnection("127.0.0.1", self.server.moto_port, timeout=10)
        connection.request(self.command, self.path, headers=dict(self.headers))
        response = connection.getresponse()
        body = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_stalled_s3_store_fails_within_the_bound(stream_root, monkeypatch):
    """A store that accepts a frame's ranged GET and never answers: with DAGAN_STREAM_TIMEOUT=1 and
    DAGAN_STREAM_RETRIES=1 the read is tried twice and gives one line within a few seconds (litdata's own client
    would wait 60 s a try, up to 1,000 tries)."""
    with moto_s3({"s3://dagan-stall/vox": stream_root}) as moto_port:
        server = ThreadingHTTPServer(("127.0.0.1", 0), StallingS3Proxy)
        server.moto_port, server.stalls, server.release = moto_port, [], threading.Event()
        server.handle_error = lambda *args: None
        threading.Thread(target=server.serve_forever, daemon=True).start()
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{server.server_address[1]}"  # moto_s3 restores it
        for name, value in (("DAGAN_STREAM_TIMEOUT", "1"), ("DAGAN_STREAM_CONNECT_TIMEOUT", "1"),
                            ("DAGAN_STREAM_RETRIES", "1")):
            monkeypatch.setenv(name, value)
        try:
            store = StreamStore("s3://dagan-stall/vox", "train", (SIZE, SIZE))
            began = time.monotonic()
            with pytest.raises(StreamError) as error:
                store.fetch(store.items[0].first, "frame")
            elapsed = time.monotonic() - began
        finally:
            server.release.set()
            server.shutdown()
    assert len(server.stalls) == 2 and elapsed < 6, (server.stalls, elapsed)  # two tries of 1 s, one backoff
    assert "timeout" in str(error.value).lower() and "\n" not in str(error.value)
    monkeypatch.setenv("DAGAN_STREAM_RETRIES", "many")
    with pytest.raises(StreamError, match="DAGAN_STREAM_RETRIES='many' is not a number"):
        StreamStore("s3://dagan-stall/vox", "train")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["depth", "gan"])
def test_training_from_s3_resumes_bit_identically(s3_store, tmp_path, stage):
    """Both training stages read s3:// through moto: two steps straight, then step 2 again from the step-1
    checkpoint; the weights agree bit for bit."""
    import test_training as training
    from dagan.checkpoint import export_official_depth, read_file
    from dagan.model import DaGAN

    stream = ["dataset_params.format=stream", f"dataset_params.root_dir={s3_store}",
              f"dataset_params.stream_cache_dir={tmp_path / 'cache'}", "train_params.image_every=100"]
    if stage == "gan":
        torch.manual_seed(0)
        export_official_depth(DaGAN(load_config(config_path("tiny.yaml"))), tmp_path / "depth")
        overrides = [*training.gan_overrides(str(tmp_path / "depth"), 2, "train_params.checkpoint_every=1", NO_VGG),
                     *stream]
    else:
        overrides = [*training.COMMON, "train_params.stage=depth", "depth_train_params.num_steps=2",
                     "depth_train_params.batch_size=2", "train_params.checkpoint_every=1", *stream]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert training.run_train(straight, overrides) == 0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copyfile(straight / "checkpoints" / "00000001.pt", resumed / "checkpoints" / "00000001.pt")
    assert training.run_train(resumed, overrides, resume="auto") == 0
    a, b = (read_file(path / "checkpoints" / "00000002.pt") for path in (straight, resumed))
    a, b = ({"networks": state["networks"], "pose": state["training"].get("pose_network", {})} for state in (a, b))
    assert flatten_tensors(a)
    for name, value in flatten_tensors(a).items():
        assert torch.equal(value, flatten_tensors(b)[name]), name


def flatten_tensors(state, prefix="") -> dict:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {key: value for name, item in state.items()
                for key, value in flatten_tensors(item, f"{prefix}.{name}").items()}
    return {}


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


def test_https_roots_read_through_the_registered_backend(stream_root, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(stream_root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert_same_samples(pairs(stream_root, "stream"), pairs(url, "stream", stream_cache_dir=str(tmp_path)),
                            range(4))
        assert verify_stream(url, decode="none", cache_dir=str(tmp_path)).errors == []
    finally:
        server.shutdown()


class StallingHandler(RangeHandler):
    """Serves the metadata, then stalls every chunk request until the server's ``release`` event (at most 60 s)."""

    def send_head(self):
        if "/chunk-" in self.path:
            self.server.stalled.set()
            self.server.release.wait(60)
        return super().send_head()


class StoppedRun(NamedTuple):
    returncode: int
    output: str  # stdout and stderr
    elapsed: float  # seconds from SIGTERM to the exit


def stop_training_on_a_stalled_store(server: ThreadingHTTPServer, ready: threading.Event, launcher: list[str],
                                     overrides: list[str], log_dir: Path, settle_s: float,
                                     timeout_s: float) -> StoppedRun:
    """Serve the stalling ``server`` on a thread, run ``train.py`` (after ``launcher``: [] for one process, torchrun's
    arguments for several) on the tiny config with ``overrides`` reading from it, and send SIGTERM ``settle_s``
    after ``ready`` is set. The server's ``release`` is set afterwards, whatever happened."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    overrides = [*overrides, f"dataset_params.root_dir=http://127.0.0.1:{server.server_address[1]}"]
    command = [sys.executable, *launcher, str(REPO_ROOT / "train.py"), "--config", config_path("tiny.yaml"),
               "--log_dir", str(log_dir)] + [item for override in overrides for item in ("--set", override)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    try:
        assert ready.wait(120), "the run never reached the stalled read"
        time.sleep(settle_s)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, error = process.communicate(timeout=timeout_s)
        elapsed = time.monotonic() - began
    finally:
        server.release.set()
        process.kill() if process.poll() is None else None
        server.shutdown()
    return StoppedRun(process.returncode, output + error, elapsed)


@pytest.mark.slow
def test_sigterm_while_the_store_stalls_saves_and_exits_at_once(stream_root, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(StallingHandler, directory=str(stream_root)))
    server.stalled, server.release = threading.Event(), threading.Event()
    overrides = ["train_params.vgg19_weights=random", "train_params.num_workers=1", "train_params.stage=depth",
                 "depth_train_params.num_steps=5", "depth_train_params.batch_size=2", "dataset_params.format=stream",
                 f"dataset_params.stream_cache_dir={tmp_path / 'cache'}"]
    # settle: the read is then waiting on the store (which answers after 60 s)
    run = stop_training_on_a_stalled_store(server, server.stalled, [], overrides, tmp_path / "run", settle_s=1.0,
                                           timeout_s=50)
    assert run.returncode == 128 + signal.SIGTERM, run.output[-3000:]
    assert run.elapsed < 20, f"took {run.elapsed:.1f} s to stop"
    assert "while waiting for data" in run.output
    assert (tmp_path / "run" / "checkpoints" / "00000000.pt").exists()


class RankStallingHandler(RangeHandler):
    """Serves everything; a ranged read that holds one of the server's ``stall_frames`` (the frames of one rank's
    second batch) waits for ``release`` (at most 60 s), and one that holds a ``progress_frames`` frame (the other
    rank's fourth batch, which its DataLoader worker fetches once step 0 is over on both ranks) sets ``progressed``."""

    def send_head(self):
        header = self.headers.get("Range")
        if header and "/chunk-" in self.path:
            start, end = (int(value) for value in header.removeprefix("bytes=").split("-"))
            data = Path(self.translate_path(self.path)).read_bytes()[start:end + 1]
            if any(frame in data for frame in self.server.progress_frames):
                self.server.progressed.set()
            if any(frame in data for frame in self.server.stall_frames):
                self.server.release.wait(60)
        return super().send_head()


def rank_frames(root: Path, overrides: list[str], rank: int, steps: int) -> list[set[bytes]]:
    """The stored frames that rank ``rank`` of 2 reads at each of the GAN stage's first ``steps`` steps (a batch
    of 1 per rank)."""
    from dagan.data import DatasetRepeater
    from dagan.training.gan_stage import pair_dataset

    config = load_config(config_path("tiny.yaml"), [*overrides, f"dataset_params.root_dir={root}"])
    pairs = pair_dataset(config)
    dataset = DatasetRepeater(pairs, config.train_params.num_repeats)
    keys = [key for key, _ in zip(make_sampler(dataset, config.train_params.seed, rank, 2, block_size=1),
                                  range(steps))]
    frames, fetch = [], pairs.store.fetch

    def recording(index, label):
        data = fetch(index, label)
        frames[-1].add(data)
        return data
    pairs.store.fetch = recording
    for key in keys:
        frames.append(set())
        dataset.sample(key)
    return frames


@pytest.mark.slow
@pytest.mark.parametrize("stalled_rank", [0, 1])
def test_sigterm_while_one_of_two_ranks_stalls_saves_the_last_step(stream_root, tmp_path, stalled_rank):
    """Two gloo ranks under torchrun (GAN stage); the store stalls the second batch of one rank, so that rank waits
    for data while the other waits in the gradient all-reduce. SIGTERM to torchrun (which passes it on to both
    ranks): the ranks stop and rank 0 saves step 1 (the last finished one) well within torchrun's 30 s before
    SIGKILL; the checkpoint resumes."""
    import test_training as training
    from dagan.checkpoint import export_official_depth
    from dagan.model import DaGAN

    torch.manual_seed(0)
    export_official_depth(DaGAN(load_config(config_path("tiny.yaml"))), tmp_path / "depth")
    base = [*training.gan_overrides(str(tmp_path / "depth"), 6, "train_params.checkpoint_every=100", NO_VGG,
                                    "train_params.image_every=100", "train_params.num_workers=1"),
            "dataset_params.format=stream"]
    stalled, other = (rank_frames(stream_root, base, rank, 5) for rank in (stalled_rank, 1 - stalled_rank))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RankStallingHandler, directory=str(stream_root)))
    server.stall_frames = stalled[1] - stalled[0] - set().union(*other)
    server.progress_frames = other[3] - stalled[0] - stalled[1] - other[0] - other[1] - other[2]
    assert server.stall_frames and server.progress_frames, "the batches share all their frames: change the seed"
    server.progressed, server.release = threading.Event(), threading.Event()
    server.handle_error = lambda *args: None  # the ranks hang up on the stalled reads when they stop
    torchrun = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_backend=c10d"]
    # settle: the other rank reaches the all-reduce of step 1 and waits there
    run = stop_training_on_a_stalled_store(server, server.progressed, torchrun,
                                           [*base, f"dataset_params.stream_cache_dir={tmp_path / 'cache'}"],
                                           tmp_path / "run", settle_s=3.0, timeout_s=60)
    print(f"stopped {run.elapsed:.1f} s after SIGTERM")
    assert run.elapsed < 25, f"took {run.elapsed:.1f} s to stop"
    assert "while waiting for data" in run.output
    checkpoint = tmp_path / "run" / "checkpoints" / "00000001.pt"
    assert sorted(path.name for path in checkpoint.parent.glob("*.pt")) == [checkpoint.name], run.output[-3000:]
    from dagan.training.run import load_training_state

    state = load_training_state(str(checkpoint))
    assert state["step"] == 1 and state["training"]["stage"] == "gan"


def write_old_tar_shards(root: Path, output: Path) -> Path:
    """A dataset in last round's format (tar shards, ``index.json`` of byte ranges), written as it was."""
    output.mkdir()
    records = []
    for split in ("train", "test"):
        clips = []
        with tarfile.open(output / f"{split}-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for folder in sorted(path for path in (root / split).iterdir() if path.is_dir()):
                ranges = []
                for frame in sorted(folder.glob("*.png")):
                    ranges.append(add_member(tar, f"{folder.name}/{frame.name}", frame.read_bytes()))
                offset, size = add_member(tar, f"{folder.name}/frames.json", json.dumps(ranges).encode())
                clips.append([folder.name, len(ranges), offset, size])
        records.append({"path": f"{split}-000000.tar", "split": split, "clips": clips})
    (output / "index.json").write_text(json.dumps({"format": "dagan-shards", "version": 1, "encoding": "png",
                                                   "layout": "splits", "shards": records}))
    return output / "index.json"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // 512) * 512, len(data)


def test_old_tar_shards_convert_to_the_same_samples(dataset_root, tmp_path):
    frames_only = tmp_path / "frames"
    shutil.copytree(dataset_root, frames_only)
    (frames_only / "train" / "id003#v3#0001#0005.mp4").unlink()  # the old png shards held frame folders
    index = write_old_tar_shards(frames_only, tmp_path / "old")
    convert_tar_shards(index, tmp_path / "new", chunk_bytes=20_000)
    assert_same_samples(pairs(frames_only), pairs(tmp_path / "new", "stream"), range(8))
    assert_same_samples(triplets(frames_only), triplets(tmp_path / "new", "stream"), range(8))


def test_make_shards_script(dataset_root, tmp_path, capsys):
    script = load_script("make_shards")
    arguments = ["--root", str(dataset_root), "--out", str(tmp_path / "out"), "--encoding", "jpeg",
                 "--part_size", "100KiB", "--no_progress"]
    assert script.main([*arguments, "--workers", "2"]) == 0
    output = capsys.readouterr().out
    assert "0 kept from an earlier run" in output and "0 problem(s)" in output
    assert script.main([*arguments, "--no_verify"]) == 0
    assert "0 part(s) written" in capsys.readouterr().out
    next((tmp_path / "out" / "test").glob("chunk-*.bin")).unlink()
    assert script.main(["--verify", str(tmp_path / "out"), "--no_progress", "--decode", "none"]) == 1
    assert "FileNotFoundError" in capsys.readouterr().err
    assert script.main(["--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no_progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_format_fields_are_validated():
    assert load_config(config_path("tiny.yaml")).dataset_params.format == "folders"
    with pytest.raises(ConfigError, match="replaced by 'stream'"):
        load_config(config_path("tiny.yaml"), ["dataset_params.format=shards"])
    with pytest.raises(ConfigError, match="stream_cache_size"):
        load_config(config_path("tiny.yaml"), ["dataset_params.stream_cache_size=lots"])
    with pytest.raises(StreamError, match="not valid JSON|not a dagan streaming dataset|cannot read"):
        StreamStore(Path(config_path("tiny.yaml")).parent)  # a folder that is no streaming dataset


@pytest.mark.slow
def test_benchmark_data_script(dataset_root, stream_root, tmp_path, capsys):
    script = load_script("benchmark_data")
    video = dataset_root / "train" / "id003#v3#0001#0005.mp4"
    roots = script.build_roots(video, 2, tmp_path)
    assert list(roots) == ["folders", "videos", "stream-png", "stream-jpeg", "stream-mp4"]
    assert StreamStore(roots["stream-mp4"].removeprefix("stream:")).encoding == "mp4"
    assert script.main(["--root", str(dataset_root), "--stream", str(stream_root), "--samples", "4",
                        "--frame_size", str(SIZE), "--kinds", "pairs", "--output", str(tmp_path / "bench.json")]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [row["format"] for row in results] == ["root", "stream0"]
    assert all(row["decoded_per_cpu_s"] > 0 and row["augmented_per_cpu_s"] > 0 and row["peak_rss_mb"] > 0
               for row in results)
    folders, stream = (row["bytes_per_sample"] for row in results)
    assert 0 < stream <= 2 * (max(path.stat().st_size for path in dataset_root.rglob("*.png")) + 8)  # two frames
    assert folders > 0 and "stream0" in capsys.readouterr().out
