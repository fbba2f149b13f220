"""INT8 post-training quantisation of the exported per-frame graphs with NNCF, for OpenVINO on CPUs.

The graphs that run once per driving frame (``depth``, ``keypoints``, ``generator``) are quantised: NNCF inserts
8-bit fake-quantisation of weights and activations, with ranges calibrated on the inputs those graphs actually
receive (recorded while the fp32 graphs animate calibration frames: :func:`recorded_feeds`), and OpenVINO runs
them with INT8 kernels. The source encoder runs once per source and stays fp32. The result is an export folder
like any other (``manifest.json`` naming OpenVINO IR files), run by ``ExportedNetworks(folder, "openvino")``.
Whether the quantised model is good enough is measured on frames (PSNR against fp32), by
:func:`dagan.inference.int8_pipeline`, which refuses it below its gate.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from typing import Iterator

import numpy as np

from dagan.runtime.backends import BackendError, ExportedNetworks
from dagan.runtime.export import MANIFEST_NAME, content_digest, read_manifest

__all__ = ["QUANTISED_GRAPHS", "recorded_feeds", "quantize_export"]

QUANTISED_GRAPHS = ("depth", "keypoints", "generator")  # the per-frame graphs; the source encoder stays fp32


@contextlib.contextmanager
def recorded_feeds(networks: ExportedNetworks) -> Iterator[dict[str, list[dict[str, np.ndarray]]]]:
    """While the block runs, every call of a per-frame graph of ``networks`` is recorded: graph name -> list of
    its input feeds (name -> array, batch of whatever the pipeline ran)."""
    recorded: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in QUANTISED_GRAPHS}
    originals = dict(networks.graphs)

    def recorder(name, runner):
        def run(feeds):
            recorded[name].append({key: value.copy() for key, value in feeds.items()})
            return runner(feeds)
        return run

    for name in QUANTISED_GRAPHS:
        networks.graphs[name] = recorder(name, originals[name])
    try:
        yield recorded
    finally:
        networks.graphs.update(originals)


def _nncf():
    try:
        import nncf
    except ImportError:
        raise BackendError("--precision int8 needs NNCF: pip install -e '.[int8]' (with the [onnx,openvino] "
                           "extras)") from None
    return nncf


def quantize_export(directory: str, output_dir: str, feeds: dict[str, list[dict[str, np.ndarray]]],
                    graphs_to_quantize: tuple[str, ...] = QUANTISED_GRAPHS) -> str:
    """Quantise ``graphs_to_quantize`` (per-frame graphs) of the export ``directory`` into ``output_dir`` (written
    whole, then moved into place), calibrated on ``feeds`` (:func:`recorded_feeds`). Returns ``output_dir``."""
    nncf = _nncf()
    import openvino

    from dagan.runtime.backends import openvino_core

    manifest = read_manifest(directory)
    staging = output_dir + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    graphs = dict(manifest.graphs)
    for name, spec in manifest.graphs.items():
        source = os.path.join(directory, spec.file)
        if name not in graphs_to_quantize:
            shutil.copy(source, os.path.join(staging, spec.file))
            continue
        if not feeds.get(name):
            raise BackendError(f"no calibration inputs were recorded for the {name} graph")
        model = openvino_core().read_model(source)
        quantized = nncf.quantize(model, nncf.Dataset(feeds[name]), subset_size=len(feeds[name]),
                                  preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=True)
        file = f"{name}_int8.xml"
        openvino.save_model(quantized, os.path.join(staging, file), compress_to_fp16=False)
        graphs[name] = dataclasses.replace(spec, file=file,  # the cache checks each graph against its digest
                                           sha256=content_digest(os.path.join(staging, file)))
    with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as stream:
        stream.write(dataclasses.replace(manifest, graphs=graphs).to_json())
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return output_dir
