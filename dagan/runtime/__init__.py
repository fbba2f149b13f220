"""Inference runtime: frozen, batch-norm-folded networks, per-device speed defaults, ONNX export and the
ONNX Runtime / OpenVINO backends that run the exported graphs inside :class:`~dagan.inference.DaGANPipeline`."""
