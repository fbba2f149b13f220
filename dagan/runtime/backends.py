"""The networks the animation pipeline calls, on each runtime backend.

:class:`~dagan.inference.DaGANPipeline` does its work (preprocessing, source caching, batching, relative motion,
smoothing) the same way whatever the backend, and calls only these five methods::

    depth(image) -> disparity                     image (B, 3, H, W) in [0, 1] -> (B, 1, H, W)
    keypoints(image, disparity) -> Keypoints      value (B, K, 2), jacobian (B, K, 2, 2) or None
    encode_source(source, disparity) -> SourceFeatures
    frame_depth, frame_keypoints                  the same two calls for driving frames (compiled with torch)
    render(source, kp_source, kp_driving, features, return_deformed) -> GeneratorOutput

* :class:`TorchNetworks`: the model itself, frozen with its batch norms folded; optional ``channels_last`` and
  ``torch.compile`` (per-frame calls only).
* :class:`ExportedNetworks`: the ONNX graphs of :mod:`dagan.runtime.export` on ONNX Runtime (CUDA and TensorRT
  providers first when that build has them) or OpenVINO (CPU, fp32). Tensors stay torch tensors on the CPU at
  the boundary; the exported generator returns the prediction only (its GeneratorOutput by-products are None).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

from dagan.geometry import Keypoints
from dagan.model import DaGAN
from dagan.networks.generator import GeneratorOutput, SourceFeatures
from dagan.runtime.defaults import RUNTIMES
from dagan.runtime.export import ExportManifest, read_manifest, unexported_attention_levels
from dagan.runtime.fusion import frozen_for_inference

BACKENDS = ("auto", *RUNTIMES)  # what --backend accepts; "auto" resolves to a runtime (choose_backend)
BACKEND_VARIABLE = "DAGAN_BACKEND"  # environment variable: the default of --backend (else "auto")
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}
ORT_PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class BackendError(RuntimeError):
    """A backend that is not installed or cannot run the request; the message names the fix."""


def default_backend() -> str:
    """``$DAGAN_BACKEND`` when set to one of :data:`BACKENDS`, else "auto"."""
    value = os.environ.get(BACKEND_VARIABLE, "auto")
    if value not in BACKENDS:
        raise BackendError(f"{BACKEND_VARIABLE}={value!r} is not a backend; use one of {', '.join(BACKENDS)}")
    return value


def is_installed(backend: str) -> bool:
    """Whether ``backend`` and, for the exported runtimes, the ONNX exporter's package are importable."""
    if backend == "torch":
        return True
    return all(importlib.util.find_spec(name) is not None for name in (backend, "onnx"))


class BackendChoice(NamedTuple):
    """The runtime "auto" resolved to, and why (one line for the log)."""

    backend: str
    reason: str


def choose_backend(device: torch.device, model: DaGAN, torch_only: Optional[str] = None) -> BackendChoice:
    """What ``--backend auto`` runs: OpenVINO on a CPU when installed and the model exports, else torch; or what
    ``--autotune`` measured fastest on this machine for this model shape, when stored.

    Measured with ``scripts/benchmark.py`` (docs/speed.md): on CPUs OpenVINO's fp32 kernels run the graphs about
    20% faster than torch (0.40-0.42x the reference's time per frame against torch's 0.49-0.57x), with frames
    within 1e-7; on GPUs torch (bf16, ``channels_last``, compile) is the fast path. ``torch_only`` names a
    requested feature only torch has (e.g. "--compile"), which keeps torch.
    """
    if device.type != "cpu":
        return BackendChoice("torch", f"torch on {device.type}")
    if torch_only is not None:
        return BackendChoice("torch", f"torch ({torch_only} needs it)")
    if not is_installed("openvino"):
        return BackendChoice("torch", "torch (OpenVINO is not installed: pip install -e \".[onnx,openvino]\" "
                                      "runs CPU frames about 20% faster)")
    attention_levels = unexported_attention_levels(model.config)
    if attention_levels:
        return BackendChoice("torch", f"torch (the exported graphs do not cover attention at decoder levels "
                                      f"{attention_levels})")
    from dagan.runtime.autotune import cached_speed_settings

    tuned = cached_speed_settings(device, model.config)
    if tuned is not None and is_installed(tuned.backend):
        return BackendChoice(tuned.backend, f"{tuned.backend} (auto-tuned as the fastest on this machine)")
    return BackendChoice("openvino", "OpenVINO (the fastest measured on CPUs; --backend torch to change)")


class TorchNetworks:
    """The model's inference calls on ``device``. ``fold_batch_norm`` works on a frozen copy (the given model
    is untouched); ``channels_last`` converts weights and inputs; ``compile`` compiles the per-frame calls (with
    ``cuda_graphs``, replayed as CUDA graphs: outputs are valid until the same call runs again)."""

    def __init__(self, model: DaGAN, device: torch.device, channels_last: bool = False, compile: bool = False,
                 fold_batch_norm: bool = True, cuda_graphs: bool = False):
        model = frozen_for_inference(model) if fold_batch_norm else model.eval()
        self.model = model.to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.depth, self.keypoints, self.encode_source = model.depth, model.keypoints, model.encode_source
        self.frame_depth, self.frame_keypoints, self._generate = model.depth, model.keypoints, model.generate
        if compile:  # weights are frozen into the compiled code (inference only)
            options = {"freezing": True, "triton.cudagraphs": cuda_graphs}  # CUDA graphs: GPU launch overhead
            self.frame_depth = torch.compile(model.depth, options=options)
            self.frame_keypoints = torch.compile(model.keypoints, options=options)
            self._generate = torch.compile(model.generate, options=options)

    def render(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints, features: SourceFeatures,
               return_deformed: bool = False) -> GeneratorOutput:
        return self._generate(source, kp_source, kp_driving, source_features=features, return_deformed=return_deformed)


GraphRunner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _import_backend(backend: str):
    try:
        if backend == "onnxruntime":
            import onnxruntime
            return onnxruntime
        import openvino
        return openvino
    except ImportError as error:
        raise BackendError(f"--backend {backend} needs its package: pip install -e \".[{EXTRAS[backend]}]\"") from error


def onnxruntime_runner(path: str, threads: int) -> GraphRunner:
    """An ONNX Runtime session (TensorRT, CUDA, then CPU providers, whichever this build has)."""
    onnxruntime = _import_backend("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = set(onnxruntime.get_available_providers())
    providers = [provider for provider in ORT_PREFERRED_PROVIDERS if provider in available]
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    names = [node.name for node in session.get_inputs()]
    return lambda feeds: session.run(None, {name: feeds[name] for name in names})


@functools.lru_cache(maxsize=None)
def openvino_core():
    """The process's one OpenVINO Core, kept alive for the whole process: a compiled model must never outlive the
    Core that loaded its device plugin (the plugin's code is unloaded with the last Core, and the model's
    destructor, run later by the garbage collector, would then crash the process)."""
    return _import_backend("openvino").Core()


def openvino_runner(path: str, threads: int) -> GraphRunner:
    """An OpenVINO model compiled for the CPU in fp32 (no bf16 down-casting on CPUs that support it)."""
    _import_backend("openvino")  # a clear error when it is not installed, even after a Core was made
    compiled = openvino_core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.inputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = request.infer({name: feeds[name] for name in names})
        return [np.array(results[port]) for port in compiled.outputs]
    return run


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


class ExportedNetworks:
    """The exported graphs of ``directory`` (see :mod:`dagan.runtime.export`) on ``backend``."""

    memory_format = torch.contiguous_format

    def __init__(self, directory: str | os.PathLike, backend: str, threads: Optional[int] = None):
        if backend not in RUNNERS:
            raise BackendError(f"backend must be one of {', '.join(RUNNERS)} for exported graphs, got {backend!r}")
        self.manifest: ExportManifest = read_manifest(directory)
        threads = threads or torch.get_num_threads()
        self.graphs = {name: RUNNERS[backend](os.path.join(directory, spec.file), threads)
                       for name, spec in self.manifest.graphs.items()}
        self.frame_depth, self.frame_keypoints = self.depth, self.keypoints

    def _run(self, name: str, **tensors: Optional[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {key: _numpy(value) for key, value in tensors.items() if value is not None}
        return [torch.from_numpy(array) for array in self.graphs[name](feeds)]

    def depth(self, image: torch.Tensor) -> torch.Tensor:
        return self._run("depth", image=image)[0]

    def keypoints(self, image: torch.Tensor, disparity: torch.Tensor) -> Keypoints:
        outputs = self._run("keypoints", image=image, disparity=disparity)
        return Keypoints(outputs[0], outputs[1] if len(outputs) > 1 else None)

    def encode_source(self, source: torch.Tensor, disparity: torch.Tensor) -> SourceFeatures:
        return SourceFeatures(*self._run("source_encoder", source=source, source_disparity=disparity))

    def render(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints, features: SourceFeatures,
               return_deformed: bool = False) -> GeneratorOutput:
        batch = kp_driving.value.shape[0]
        kp_source = Keypoints(*(None if tensor is None else tensor.expand(batch, *tensor.shape[1:])
                                for tensor in kp_source))
        prediction = self._run("generator", source=source, appearance=features.appearance,
                               depth_features=features.depth, kp_source_value=kp_source.value,
                               kp_driving_value=kp_driving.value, kp_source_jacobian=kp_source.jacobian,
                               kp_driving_jacobian=kp_driving.jacobian)[0]
        return GeneratorOutput(prediction, None, None, None, None, None, None)
