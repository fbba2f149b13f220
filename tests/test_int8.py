"""--precision int8: NNCF post-training quantisation of the exported per-frame graphs on the parity fixture, and
its PSNR gate against fp32 (dagan.inference.int8_pipeline, dagan.runtime.quantize)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from conftest import PARITY_DIR, write_parity_release

from dagan.inference import InferenceError, int8_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("nncf", "openvino", "onnx")),
    reason="needs the [onnx,openvino,int8] extras: pip install -e '.[onnx,openvino,int8]'")]


@pytest.fixture(scope="module")
def parity_case(tmp_path_factory):
    """The parity model and its inputs: source, calibration frames (flipped and shifted inputs), held-out frames
    (the two driving frames as they are)."""
    from dagan.model import load_official

    paths = write_parity_release(tmp_path_factory.mktemp("release"))
    model = load_official(paths["checkpoint"], os.path.dirname(paths["encoder"]), str(PARITY_DIR / "model.yaml"))
    inputs = np.load(PARITY_DIR / "inputs.npz")
    source = inputs["source_uint8"]
    held_out = [inputs["driving_initial_uint8"], inputs["driving_uint8"]]
    calibration = [np.ascontiguousarray(change(image)) for image in (source, *held_out)
                   for change in (lambda image: image[:, ::-1], lambda image: np.roll(image, 12, axis=1))]
    return model, source, calibration, held_out


def test_int8_is_quantised_and_gated_by_its_psnr(parity_case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGAN_CACHE", str(tmp_path))
    model, source, calibration, held_out = parity_case
    pipeline, psnr = int8_pipeline(model, source, calibration, held_out, min_psnr=float("-inf"))
    folder = os.path.dirname(next(_int8_folders(tmp_path)))
    for graph in ("depth", "keypoints", "generator"):
        xml = open(os.path.join(folder, f"{graph}_int8.xml"), encoding="utf-8").read()
        assert 'type="FakeQuantize"' in xml, graph  # really quantised, not an fp32 copy
    print(f"INT8 on the parity fixture: {psnr:.1f} dB PSNR against fp32")
    assert 10.0 < psnr < 100.0  # close to fp32, but not equal to it
    accepted, again = int8_pipeline(model, source, calibration, held_out, min_psnr=psnr - 0.1)  # cached folder
    assert again == pytest.approx(psnr)
    with pytest.raises(InferenceError, match=rf"refused: {psnr:.1f} dB PSNR against fp32 on 2 held-out frames, "
                                             rf"under the {psnr + 0.1:g} dB gate"):
        int8_pipeline(model, source, calibration, held_out, min_psnr=psnr + 0.1)
    if psnr < 35.0:  # the project's gate, as scripts/live.py --precision int8 applies it
        with pytest.raises(InferenceError, match="under the 35 dB gate"):
            int8_pipeline(model, source, calibration, held_out)


def _int8_folders(root):
    for directory, _, files in os.walk(root):
        if "manifest.json" in files and "-int8-" in directory:
            yield os.path.join(directory, "manifest.json")
