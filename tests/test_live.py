"""dagan.live: the newest-frame slot, the real-time loop on a file played as a camera, re-anchoring, the face-lost
hold, equality with the offline demo, and the one-line errors of scripts/live.py."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NEEDS_FACES, REPO_ROOT, has_dlib

from dagan.io import open_video, read_image_uint8, write_png
from dagan.live import CaptureThread, LiveError, LiveLoop, NewestFrameSlot, open_file_source
from dagan.live.capture import FrameSource, open_camera, open_stream
from dagan.live.loop import FACE_LOST
from dagan.live.sinks import CollectSink

SOURCE = str(REPO_ROOT / "data" / "samples" / "source.png")
DRIVING = str(REPO_ROOT / "data" / "samples" / "driving.mp4")


@pytest.fixture(scope="module")
def driving_frames() -> list[np.ndarray]:
    """The first 24 frames of the bundled driving video (a real face, 256x256)."""
    return list(frame for _, frame in zip(range(24), open_video(DRIVING)))


def frame_folder(folder: Path, frames: list[np.ndarray]) -> str:
    folder.mkdir()
    for index, frame in enumerate(frames):
        write_png(folder / f"{index:04d}.png", frame)
    return str(folder)


def live_args(checkpoint: str, driving: str, *extra: str):
    from dagan.cli.live import build_parser

    return build_parser().parse_args(["--source_image", SOURCE, "--checkpoint", checkpoint, "--driving_video", driving,
                                      "--backend", "torch", "--device", "cpu", "--crop", "none", "--driving_crop",
                                      "none", *extra])


def live_loop(args, sinks=()):
    """The objects scripts/live.py builds, with a collecting sink: (loop, capture thread, animator)."""
    from dagan.cli.live import driving_tracker, open_source, source_animator
    from dagan.cli.pipeline import load_pipeline

    animator = source_animator(args, load_pipeline(args))
    animator.warm_up()
    capture = CaptureThread(open_source(args))
    return LiveLoop(capture.slot, driving_tracker(args), animator, [CollectSink(), *sinks]), capture, animator


def slowed(animator, seconds: float) -> None:
    """Make the generator stage ``seconds`` slower (a slow device)."""
    render = animator.render

    def slow_render(kp_driving):
        time.sleep(seconds)
        return render(kp_driving)

    animator.render = slow_render


# The slot.

def test_slot_keeps_only_the_newest_frame_and_counts_the_drops():
    slot = NewestFrameSlot()
    held = []

    def produce():
        from dagan.live.slot import CapturedFrame

        for index in range(200):
            slot.put(CapturedFrame(np.zeros((2, 2, 3), np.uint8), time.perf_counter(), index))
            held.append(len(slot))
            time.sleep(0.0005)
        slot.close()

    producer = threading.Thread(target=produce)
    producer.start()
    taken = []
    while (frame := slot.take(timeout=2)) is not None:
        taken.append(frame.index)
        time.sleep(0.005)  # a consumer ten times slower than the producer
    producer.join()
    assert max(held) == 1
    assert taken == sorted(taken) and taken[-1] == 199  # newest first: the last frame is never lost
    assert slot.dropped > 100 and slot.taken + slot.dropped == slot.captured == 200


# The loop on a file played as a camera.

def test_slow_stage_drops_frames_instead_of_queueing_them(tiny_checkpoint, tmp_path, driving_frames):
    args = live_args(tiny_checkpoint, frame_folder(tmp_path / "clip", driving_frames), "--realtime", "--fps", "25")
    loop, capture, animator = live_loop(args)
    slowed(animator, 0.12)  # slower than the 40 ms between frames
    held = []
    loop.sinks.append(type("Probe", (), {"show": lambda self, shown: held.append(len(loop.slot))})())
    capture.start()
    stats = loop.run()
    summary = stats.summary()
    assert max(held) <= 1
    assert summary["frames_dropped"] > 0
    assert summary["frames_shown"] + summary["frames_dropped"] == summary["frames_captured"] == len(driving_frames)
    # A queue would make the last frames wait for every earlier one (about 24 x 0.12 - 1 s = 1.9 s); the slot keeps
    # each shown frame at most one processing time plus one capture interval old.
    processing = np.sum([stats.stages[stage] for stage in ("track", "keypoints", "generator", "paste", "output")],
                        axis=0)  # (frames shown,) seconds
    assert max(stats.latencies) < 2 * processing.max() + 0.04 + 0.1, stats.line()
    assert max(stats.latencies[-5:]) < 2 * processing.max() + 0.04 + 0.1  # no growth towards the end


def test_slow_input_drops_nothing_and_equals_the_offline_demo(tiny_checkpoint, tmp_path, driving_frames):
    from dagan.cli.demo import main as demo_main

    frames = driving_frames[:8]
    clip = frame_folder(tmp_path / "clip", frames)
    args = live_args(tiny_checkpoint, clip, "--realtime", "--fps", "4")
    loop, capture, _ = live_loop(args)
    capture.start()
    stats = loop.run()
    assert stats.summary()["frames_dropped"] == 0
    shown = [item.image for item in loop.sinks[0].frames]
    assert len(shown) == len(frames)
    out = tmp_path / "offline"
    assert demo_main(["--checkpoint", tiny_checkpoint, "--source_image", SOURCE, "--driving_video", clip,
                      "--result_video", str(out) + "/", "--relative", "--adapt_scale", "--crop", "none",
                      "--batch_size", "1", "--backend", "torch", "--cpu"]) == 0
    offline = [read_image_uint8(path) for path in sorted(out.glob("*.png"))]
    assert len(offline) == len(shown)
    for live_frame, offline_frame in zip(shown, offline):
        np.testing.assert_array_equal(live_frame, offline_frame)


def test_reanchoring_changes_the_reference(tiny_checkpoint, tmp_path, driving_frames):
    args = live_args(tiny_checkpoint, frame_folder(tmp_path / "clip", driving_frames[:12]))  # every frame, in order

    class ReanchorAt:
        def __init__(self, index):
            self.index, self.count = index, 0

        def show(self, shown):
            self.count += 1

        def poll(self):
            return "reanchor" if self.count == self.index else None

    loop, capture, animator = live_loop(args, [ReanchorAt(6)])
    capture.start()
    loop.run()
    shown = loop.sinks[0].frames
    assert [item.captured.index for item in shown] == list(range(12))
    first = animator.pipeline.driving_keypoints(animator.pipeline.to_tensor([driving_frames[0]]))[0]
    sixth = animator.pipeline.driving_keypoints(animator.pipeline.to_tensor([driving_frames[6]]))[0]
    assert np.allclose(animator.anchor.value.numpy(), sixth.value.numpy(), atol=1e-6)
    assert not np.allclose(first.value.numpy(), sixth.value.numpy(), atol=1e-3)
    # Measured from the new anchor, frame 6 moves the source by nothing; measured from frame 0 it moved it.
    source = animator.source.keypoints.value.numpy()
    moved_now = animator.motion.transfer(animator.source.keypoints, sixth, animator.anchor, animator.scale)
    moved_before = animator.motion.transfer(animator.source.keypoints, sixth, first)
    assert np.allclose(moved_now.value.numpy(), source, atol=1e-6)
    assert not np.allclose(moved_before.value.numpy(), source, atol=1e-3)


@pytest.mark.skipif(not has_dlib(), reason=NEEDS_FACES)
def test_a_stretch_without_a_face_holds_the_last_frame_and_recovers(tiny_checkpoint, tmp_path, driving_frames):
    blank = np.full_like(driving_frames[0], 128)
    frames = driving_frames[:6] + [blank] * 8 + driving_frames[6:12]
    args = live_args(tiny_checkpoint, frame_folder(tmp_path / "clip", frames), "--driving_crop", "track")
    loop, capture, _ = live_loop(args)
    capture.start()
    loop.wait_for_face(5.0)
    stats = loop.run()
    shown = loop.sinks[0].frames
    found = [item.face_found for item in shown]
    assert len(shown) == len(frames) and stats.errors == 0
    assert all(found[:6]) and all(found[14:]), found  # recovers on the first frame with a face again
    lost = [item for item in shown[6:14] if not item.face_found]
    assert len(lost) >= 8 - loop.tracker.verify_every  # noticed within verify_every frames
    last_good = [item for item in shown[:14] if item.face_found][-1].image
    for item in lost:
        assert item.status == FACE_LOST
        np.testing.assert_array_equal(item.image[40:], last_good[40:])  # held (the status is written on top)
    assert loop.tracker.detections <= 1 + len(lost) + 1  # detect once, search only while lost


# One-line errors.

def test_missing_camera_is_one_line():
    with pytest.raises(LiveError, match="no camera 97"):
        open_camera("97", wait_s=1)


def test_camera_that_cannot_be_opened_is_one_line(tmp_path):
    not_a_camera = tmp_path / "video0"
    not_a_camera.write_bytes(b"")
    with pytest.raises(LiveError, match="could not be opened|gave no frame"):
        open_camera(str(not_a_camera), wait_s=1)


def test_camera_without_frames_is_one_line(monkeypatch):
    import cv2

    class Silent:
        def isOpened(self):
            return True

        def read(self):
            time.sleep(3)
            return False, None

        def release(self):
            pass

        def get(self, _):
            return 0.0

    monkeypatch.setattr(cv2, "VideoCapture", lambda *args: Silent())
    monkeypatch.setattr("os.path.exists", lambda path: True)
    started = time.perf_counter()
    with pytest.raises(LiveError, match="gave no frame in 0.5 s"):
        open_camera("0", wait_s=0.5)
    assert time.perf_counter() - started < 2


def test_stream_that_does_not_answer_fails_within_the_wait():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, never answers
    port = server.getsockname()[1]
    started = time.perf_counter()
    try:
        with pytest.raises(LiveError, match="did not answer within 1 s"):
            open_stream(f"http://127.0.0.1:{port}/live", wait_s=1)
    finally:
        server.close()
    assert time.perf_counter() - started < 5


def test_virtual_camera_without_a_backend_names_what_to_install(monkeypatch):
    import sys
    import types

    from dagan.live.sinks import VirtualCameraSink

    def no_backend(**kwargs):
        raise RuntimeError("'v4l2loopback' backend: no v4l2 loopback device found")

    fake = types.SimpleNamespace(Camera=no_backend, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "pyvirtualcam", fake)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(LiveError, match="no virtual-camera backend.*v4l2loopback"):
        VirtualCameraSink((64, 64), 25)
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(LiveError, match="OBS Studio"):
        VirtualCameraSink((64, 64), 25)


def test_output_errors_come_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--window without a display and --virtual_camera without a backend are reported before the checkpoint is
    even read (this one does not exist)."""
    import types

    from dagan.cli.live import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    common = ["--source_image", SOURCE, "--checkpoint", str(tmp_path / "missing.pt"), "--driving_video", DRIVING]
    assert main([*common, "--window"]) == 1
    assert "error: --window needs a display" in capsys.readouterr().err

    def no_backend(**kwargs):
        raise RuntimeError("no v4l2 loopback device found")

    fake = types.SimpleNamespace(Camera=no_backend, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(__import__("sys").modules, "pyvirtualcam", fake)
    assert main([*common, "--virtual_camera"]) == 1
    assert "error: no virtual-camera backend" in capsys.readouterr().err


def test_no_face_at_start_and_no_display_are_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from dagan.cli.live import main

    blank = [np.full((128, 128, 3), 100, np.uint8)] * 3
    clip = frame_folder(tmp_path / "blank", blank)
    common = ["--source_image", SOURCE, "--checkpoint", tiny_checkpoint, "--driving_video", clip, "--backend",
              "torch", "--crop", "none"]
    if has_dlib():
        assert main([*common, "--record", str(tmp_path / "out.mp4"), "--wait", "1"]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: no face in view at start")
        assert not (tmp_path / "out.mp4").exists()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main([*common, "--driving_crop", "none"]) == 1  # no output given: the window, and there is no display
    assert "needs a display" in capsys.readouterr().err.strip().splitlines()[-1]


def test_record_writes_what_was_shown(tiny_checkpoint, tmp_path, driving_frames):
    from dagan.cli.live import main

    clip = frame_folder(tmp_path / "clip", driving_frames[:10])
    out = tmp_path / "live.mp4"
    assert main(["--source_image", SOURCE, "--checkpoint", tiny_checkpoint, "--driving_video", clip, "--backend",
                 "torch", "--crop", "none", "--driving_crop", "none", "--realtime", "--record", str(out)]) == 0
    video = open_video(out)
    assert video.num_frames >= 8 and video.size == (64, 64)  # 10 frames at 25 fps, in real time


def test_a_source_that_fails_mid_run_ends_the_loop_with_its_error(tiny_checkpoint, tmp_path, driving_frames):
    class Breaks(FrameSource):
        paced = True

        def __init__(self):
            self.count = 0

        def read(self):
            self.count += 1
            if self.count > 3:
                raise OSError("camera unplugged")
            return driving_frames[self.count]

    args = live_args(tiny_checkpoint, frame_folder(tmp_path / "clip", driving_frames[:2]))
    loop, _, _ = live_loop(args)
    capture = CaptureThread(Breaks())
    loop.slot = capture.slot
    capture.start()
    with pytest.raises(OSError, match="unplugged"):
        loop.run()
    assert 1 <= len(loop.sinks[0].frames) <= 3
    assert open_file_source(args.driving_video).fps > 0
