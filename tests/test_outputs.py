"""The one output guard (dagan.io.files.guard_output), over every output flag of every command: each flag pointed at
one of the command's inputs, at a file the user made and at another output of the same command is refused before
any work, with one line, and the file is left byte for byte as it was. The inputs are small placeholder files: every
check runs before a model, a video or a face backend is loaded (a check that came later would fail on them with
another message, and the test with it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from conftest import config_path, load_script
from dagan.io.files import (OutputError, atomic_write_bytes, guard_output, record_written, written_by_this_project)

USER_BYTES = b"the user's own file: never replaced\n"
REFUSED = ("refusing", "name the same file", "would overwrite", "is a file, not a folder")


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """Placeholder inputs (their content is never read before the output checks)."""
    files = {"checkpoint": "dagan.pt", "audio_checkpoint": "audio.pt", "portrait": "portrait.png",
             "driving": "driving.mp4", "speech": "speech.wav", "reference": "reference.mp4", "config": "config.yaml"}
    paths = {}
    for name, file_name in files.items():
        paths[name] = tmp_path / "inputs" / file_name
        paths[name].parent.mkdir(exist_ok=True)
        paths[name].write_bytes(f"input {name}\n".encode())
    paths["config"].write_text(Path(config_path("tiny.yaml")).read_text())
    paths["folder"] = tmp_path / "inputs"
    paths["user"] = tmp_path / "user"
    paths["user"].mkdir()
    return paths


def user_file(world, name: str) -> Path:
    """A file the user made, at ``name`` inside the user's folder."""
    path = world["user"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_BYTES)
    return path


# Commands: each builds its argv from the world and the path the flag under test gets.
def demo(argv):
    from dagan.cli.demo import main

    return main([str(argument) for argument in argv])


def script(name: str) -> Callable:
    def run(argv):
        return load_script(name).main([str(argument) for argument in argv])
    run.__name__ = name
    return run


def train(argv):
    from dagan.cli.train import main

    return main([str(argument) for argument in argv])


def video_demo(w):
    return ["--checkpoint", w["checkpoint"], "--source_image", w["portrait"], "--driving_video", w["driving"],
            "--cpu"]


def audio_demo(w):
    return ["--checkpoint", w["checkpoint"], "--source_image", w["portrait"], "--driving_audio", w["speech"],
            "--audio_checkpoint", w["audio_checkpoint"], "--reference_video", w["reference"], "--cpu"]


def personalize(w):
    return ["--video", w["driving"], "--checkpoint", w["checkpoint"], "--steps", "1", "--device", "cpu"]


def live(w):
    return ["--checkpoint", w["checkpoint"], "--source_image", w["portrait"], "--driving_video", w["driving"],
            "--backend", "torch"]


def batch_folder(w) -> Path:
    folder = w["user"] / "faces"
    folder.mkdir(exist_ok=True)
    (folder / "face.png").write_bytes(b"a photo")
    return folder


# (command, flag, what the flag points at, argv builder: world -> (argv, the path that must stay as it was)).
CASES = [
    (demo, "--result_video", "input", lambda w: (video_demo(w) + ["--result_video", w["driving"]], w["driving"])),
    (demo, "--result_video", "foreign", lambda w: (video_demo(w) + ["--result_video", user_file(w, "mine.mp4")],
                                                   w["user"] / "mine.mp4")),
    (demo, "--visualize", "input", lambda w: (["--checkpoint", w["checkpoint"], "--source_image", w["portrait"],
                                               "--driving_video", user_file(w, "take_visualization.mp4"), "--cpu",
                                               "--visualize", "--result_video", w["user"] / "take.mp4"],
                                              w["user"] / "take_visualization.mp4")),
    (demo, "--visualize", "foreign", lambda w: (video_demo(w) + ["--visualize", "--result_video", w["user"] / "r.mp4"],
                                                user_file(w, "r_visualization.mp4"))),
    (demo, "--visualize (batch)", "foreign", lambda w: (
        ["--checkpoint", w["checkpoint"], "--source_image", batch_folder(w), "--driving_video", w["driving"],
         "--cpu", "--visualize", "--result_video", f"{w['user'] / 'results'}{os.sep}"],
        user_file(w, "results/face_by_driving_visualization.mp4"))),
    (demo, "--result_video (speech)", "input", lambda w: (audio_demo(w) + ["--result_video", w["reference"]],
                                                          w["reference"])),
    (demo, "--result_video (speech)", "foreign", lambda w: (audio_demo(w) + ["--result_video",
                                                                             user_file(w, "t.mp4")],
                                                            w["user"] / "t.mp4")),
    (demo, "--save_motion", "input", lambda w: (audio_demo(w) + ["--result_video", w["user"] / "t.mp4",
                                                                 "--save_motion", w["portrait"]], w["portrait"])),
    (demo, "--save_motion", "input", lambda w: (audio_demo(w) + ["--result_video", w["user"] / "t.mp4",
                                                                 "--save_motion", w["audio_checkpoint"]],
                                                w["audio_checkpoint"])),
    (demo, "--save_motion", "foreign", lambda w: (audio_demo(w) + ["--result_video", w["user"] / "t.mp4",
                                                                   "--save_motion", user_file(w, "m.npz")],
                                                  w["user"] / "m.npz")),
    (demo, "--save_motion", "other output", lambda w: (audio_demo(w) + ["--result_video", w["user"] / "t.mp4",
                                                                        "--save_motion", w["user"] / "t.mp4"],
                                                       w["user"] / "t.mp4")),
    (script("personalize"), "--output", "input", lambda w: (personalize(w) + ["--overwrite", "--output",
                                                                              w["driving"]], w["driving"])),
    (script("personalize"), "--output", "input", lambda w: (personalize(w) + ["--overwrite", "--output",
                                                                              w["checkpoint"]], w["checkpoint"])),
    (script("personalize"), "--output", "foreign", lambda w: (personalize(w) + ["--overwrite", "--output",
                                                                                user_file(w, "a.pt")],
                                                              w["user"] / "a.pt")),
    (script("personalize"), "--log_dir", "input", lambda w: (personalize(w) + ["--output", w["user"] / "a.pt",
                                                                               "--log_dir", w["folder"]],
                                                             w["driving"])),
    (script("personalize"), "--log_dir", "foreign", lambda w: (personalize(w) + ["--output", w["user"] / "a.pt",
                                                                                 "--log_dir", user_file(w, "run")],
                                                               w["user"] / "run")),
    (script("personalize"), "--log_dir", "other output", lambda w: (personalize(w) + [
        "--output", w["user"] / "a.pt", "--log_dir", w["user"] / "a.pt"], w["user"] / "a.pt")),
    (script("make_shards"), "--out", "input", lambda w: (["--root", w["folder"], "--out", w["folder"].parent,
                                                          "--no_progress"], w["driving"])),
    (script("make_shards"), "--out", "foreign", lambda w: (["--root", w["folder"], "--out", w["user"],
                                                            "--no_progress"], user_file(w, "dataset.json"))),
    (script("prepare_av"), "--out", "input", lambda w: (["--inp", w["driving"], "--out", w["folder"],
                                                         "--checkpoint", w["checkpoint"]], w["driving"])),
    (script("prepare_av"), "--out", "foreign", lambda w: (["--inp", w["driving"], "--out", user_file(w, "items"),
                                                           "--checkpoint", w["checkpoint"]], w["user"] / "items")),
    (script("prepare_dataset"), "--out", "input", lambda w: (["--inp", w["folder"], "--out", w["folder"]],
                                                             w["driving"])),
    (script("prepare_dataset"), "--out", "foreign", lambda w: (["--inp", w["folder"], "--out",
                                                                user_file(w, "dataset")], w["user"] / "dataset")),
    (script("crop_video"), "--out", "input", lambda w: (["--inp", w["portrait"], "--out", w["folder"]],
                                                        w["portrait"])),
    (script("crop_video"), "--out", "foreign", lambda w: (["--inp", w["portrait"], "--out", w["user"]],
                                                          user_file(w, "portrait.png"))),
    (script("export_checkpoint"), "--inference", "input", lambda w: (["--checkpoint", w["checkpoint"],
                                                                      "--inference", w["checkpoint"]],
                                                                     w["checkpoint"])),
    (script("export_checkpoint"), "--inference", "foreign", lambda w: (["--checkpoint", w["checkpoint"],
                                                                        "--inference", user_file(w, "i.pt")],
                                                                       w["user"] / "i.pt")),
    (script("export_checkpoint"), "--official", "input", lambda w: (["--checkpoint", w["checkpoint"], "--official",
                                                                     w["folder"], "--name", "dagan.pt"],
                                                                    w["checkpoint"])),
    (script("export_checkpoint"), "--official", "foreign", lambda w: (["--checkpoint", w["checkpoint"],
                                                                       "--official", w["user"]],
                                                                      user_file(w, "depth/depth.pth"))),
    (script("export_checkpoint"), "--official", "other output", lambda w: (
        ["--checkpoint", w["checkpoint"], "--official", w["user"], "--name", "i.pt", "--inference",
         w["user"] / "i.pt"], w["user"] / "i.pt")),
    (script("export_onnx"), "--output", "input", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                             w["folder"]], w["checkpoint"])),
    (script("export_onnx"), "--output", "foreign", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                               user_file(w, "onnx")], w["user"] / "onnx")),
    (script("evaluate"), "--output", "input", lambda w: (["--generated", w["driving"], "--reference",
                                                          w["reference"], "--output", w["reference"]],
                                                         w["reference"])),
    (script("evaluate"), "--output", "foreign", lambda w: (["--generated", w["driving"], "--reference",
                                                            w["reference"], "--output", user_file(w, "r.json")],
                                                           w["user"] / "r.json")),
    (script("evaluate"), "--csv", "input", lambda w: (["--generated", w["driving"], "--reference", w["reference"],
                                                       "--output", w["user"] / "r.json", "--csv", w["driving"]],
                                                      w["driving"])),
    (script("evaluate"), "--csv", "foreign", lambda w: (["--generated", w["driving"], "--reference",
                                                         w["reference"], "--output", w["user"] / "r.json", "--csv",
                                                         user_file(w, "items.csv")], w["user"] / "items.csv")),
    (script("evaluate"), "--csv", "other output", lambda w: (["--generated", w["driving"], "--reference",
                                                              w["reference"], "--output", w["user"] / "r.json",
                                                              "--csv", w["user"] / "r.json"], w["user"] / "r.json")),
    (script("evaluate"), "--output (protocols)", "foreign", lambda w: (
        ["--checkpoint", w["checkpoint"], "--protocol", "reconstruction", "--dataset", w["folder"], "--output",
         w["user"]], user_file(w, "results.json"))),
    (script("evaluate_lipsync"), "--out", "input", lambda w: (["--video", w["driving"], "--out", w["driving"]],
                                                              w["driving"])),
    (script("evaluate_lipsync"), "--out", "foreign", lambda w: (["--video", w["driving"], "--out",
                                                                 user_file(w, "sync.json")],
                                                                w["user"] / "sync.json")),
    (script("eval_depth"), "--output", "input", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                            w["checkpoint"]], w["checkpoint"])),
    (script("eval_depth"), "--output", "foreign", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                              user_file(w, "depth.json")],
                                                             w["user"] / "depth.json")),
    (script("eval_depth"), "--figure", "input", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                            w["user"] / "d.json", "--figure", w["portrait"]],
                                                           w["portrait"])),
    (script("eval_depth"), "--figure", "foreign", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                              w["user"] / "d.json", "--figure",
                                                              user_file(w, "f.png")], w["user"] / "f.png")),
    (script("eval_depth"), "--figure", "other output", lambda w: (["--checkpoint", w["checkpoint"], "--output",
                                                                   w["user"] / "d.png", "--figure",
                                                                   w["user"] / "d.png"], w["user"] / "d.png")),
    (script("benchmark"), "--output", "input", lambda w: (["--config", w["config"], "--output", w["config"]],
                                                          w["config"])),
    (script("benchmark"), "--output", "foreign", lambda w: (["--config", w["config"], "--output",
                                                             user_file(w, "b.json")], w["user"] / "b.json")),
    (script("benchmark_training"), "--output", "input", lambda w: (["--config", w["config"], "--output",
                                                                    w["config"]], w["config"])),
    (script("benchmark_training"), "--output", "foreign", lambda w: (["--config", w["config"], "--output",
                                                                      user_file(w, "b.json")],
                                                                     w["user"] / "b.json")),
    (script("benchmark_data"), "--output", "input", lambda w: (["--video", w["driving"], "--output", w["driving"]],
                                                               w["driving"])),
    (script("benchmark_data"), "--output", "foreign", lambda w: (["--video", w["driving"], "--output",
                                                                  user_file(w, "b.json")], w["user"] / "b.json")),
    (script("make_samples"), "--output-directory", "input", lambda w: (
        ["--wheel", w["user"] / "driving.mp4", "--output-directory", w["user"]], user_file(w, "driving.mp4"))),
    (script("make_samples"), "--output-directory", "foreign", lambda w: (
        ["--wheel", w["driving"], "--output-directory", w["user"]], user_file(w, "source.png"))),
    (script("make_samples"), "--preview", "other output", lambda w: (
        ["--wheel", w["driving"], "--output-directory", w["user"], "--preview", w["user"] / "source.png"],
        w["portrait"])),
    (script("ablate_attention"), "--out", "foreign", lambda w: (["--out", w["user"]], user_file(w, "results.json"))),
    (script("ablate_attention"), "--out", "input", lambda w: (["--out", w["user"], "--depth_dir",
                                                               w["user"] / "depth"], user_file(w, "depth/depth.pth"))),
    (train, "--log_dir", "input", lambda w: (["--config", w["config"], "--log_dir", w["folder"], "--resume", "auto"],
                                             w["config"])),
    (train, "--log_dir", "foreign", lambda w: (["--config", w["config"], "--log_dir", user_file(w, "run")],
                                               w["user"] / "run")),
    (script("live"), "--record", "input", lambda w: (live(w) + ["--record", w["driving"]], w["driving"])),
    (script("live"), "--record", "foreign", lambda w: (live(w) + ["--record", user_file(w, "live.mp4")],
                                                      w["user"] / "live.mp4")),
]


@pytest.mark.parametrize("command, flag, target, build", CASES,
                         ids=[f"{getattr(case[0], '__name__', 'script')}-{case[1]}-{case[2]}-{number}"
                              for number, case in enumerate(CASES)])
def test_every_output_flag_refuses_inputs_user_files_and_its_other_outputs(world, capfd, command, flag, target,
                                                                           build):
    argv, protected = build(world)
    before = {path: path.read_bytes() for path in (protected, *world.values()) if path.is_file()}
    try:
        code = command(argv)
    except SystemExit as exit:  # the benchmarks refuse while parsing their arguments (parser.error)
        code = exit.code
    assert code != 0
    captured = capfd.readouterr()
    error = (captured.err + captured.out + (code if isinstance(code, str) else "")).strip().splitlines()
    assert error and any(word in error[-1] for word in REFUSED), (flag, target, error[-3:])
    assert {path: path.read_bytes() for path in before} == before


def test_guard_lets_this_project_replace_only_its_own_files(tmp_path):
    ours = tmp_path / "result.json"
    atomic_write_bytes(ours, b"{}")
    assert written_by_this_project(ours)
    guard_output(ours, [tmp_path / "input.png"], "--output")  # ours: may be replaced
    ours.write_bytes(b"edited by the user")  # changed since: the user's now
    assert not written_by_this_project(ours)
    with pytest.raises(OutputError, match="did not write"):
        guard_output(ours, [], "--output")
    hard_link = tmp_path / "link.json"
    os.link(ours, hard_link)  # another name of an input, found by its inode
    with pytest.raises(OutputError, match="would overwrite the input"):
        guard_output(hard_link, [ours], "--output")
    record_written(tmp_path / "missing.json")  # nothing to record: no error, nothing claimed
    assert not written_by_this_project(tmp_path / "missing.json")


def test_a_replaced_output_is_ours_from_the_moment_it_appears(tmp_path, monkeypatch):
    """Two torchrun ranks: one replaces the report while the other checks it with guard_output. The file must count
    as this project's the instant the rename makes it appear, not only once it is recorded afterwards."""
    import dagan.io.files as files

    report = tmp_path / "per_item.csv"
    atomic_write_bytes(report, b"first")
    seen = []
    rename = os.replace

    def rename_and_check(source, target):
        rename(source, target)
        if Path(target) == report:
            seen.append(written_by_this_project(report))

    monkeypatch.setattr(files.os, "replace", rename_and_check)
    atomic_write_bytes(report, b"second, as another rank checks it")
    assert seen == [True] and written_by_this_project(report)


def test_ownership_falls_back_to_the_folder_log_without_extended_attributes(tmp_path, monkeypatch):
    def no_attributes(*arguments):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_attributes)
    monkeypatch.setattr(os, "getxattr", no_attributes)
    ours = tmp_path / "motion.npz"
    atomic_write_bytes(ours, b"motion")
    assert (tmp_path / ".dagan-written").is_file() and written_by_this_project(ours)
    user = tmp_path / "other.npz"
    user.write_bytes(USER_BYTES)
    assert not written_by_this_project(user)
