"""The motion-aware driver the command line, the app and the speech mode call: builds a source's
:class:`~dagan.motion.control.MotionEditor` (face regions from its 68 landmarks, openness targets solved) and
animates from a motion file.

``dagan.inference`` sits below this package, so the pipeline knows nothing of it: it takes the editor as its
``edit`` callable (:meth:`~dagan.inference.DaGANPipeline.animate`, ``animate_keypoints``).

    control = MotionControl(animate="expression", region_scales=(("mouth", 1.3),))
    editor = motion_editor(pipeline, source_image, control, analyzer=get_face_analyzer())
    for frame in pipeline.animate(source_image, video, edit=editor): ...
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from dagan.geometry import Keypoints, pixels_to_keypoint_coordinates
from dagan.inference import AnimatedFrame, DaGANPipeline, SourceState, to_uint8_batch
from dagan.motion.control import MotionControl, MotionEditor
from dagan.motion.files import Motion
from dagan.motion.openness import OpennessResult, solve_openness
from dagan.motion.regions import REGIONS, assign_regions, describe_regions, opening, openness, region_colors

NEEDS_ANALYZER = ("region scales, --still and openness targets find the source's 68 landmarks: install the [faces] "
                  "extra (pip install -e '.[faces]')")


class SourceFace(NamedTuple):
    """A prepared source's face: its 68 landmarks in keypoint coordinates (68, 2) and its keypoints' regions (K,)."""

    landmarks: np.ndarray
    regions: np.ndarray


def model_image(pipeline: DaGANPipeline, source: SourceState) -> np.ndarray:
    """The source as the model sees it: (H, W, 3) uint8 at the model's resolution."""
    return to_uint8_batch(source.image)[0]


def find_source_face(pipeline: DaGANPipeline, source: SourceState, analyzer) -> Optional[SourceFace]:
    """The source's landmarks (found on the model-resolution image) and its keypoints' regions, or None."""
    image = model_image(pipeline, source)
    points = analyzer.landmarks(image)
    if points is None:
        return None
    height, width = image.shape[:2]
    landmarks = pixels_to_keypoint_coordinates(np.asarray(points, np.float64), height, width)
    regions = assign_regions(source.keypoints.value[0].detach().double().cpu().numpy(), landmarks)
    return SourceFace(landmarks, regions)


def measure_openness(analyzer, image: np.ndarray) -> Optional[dict[str, float]]:
    """Eye and mouth openness of the largest face in ``image`` (uint8), or None when no face is found."""
    points = analyzer.landmarks(image)
    return None if points is None else openness(np.asarray(points, np.float64))


def opened_keypoints(source: SourceState, face: SourceFace, amounts: dict[str, float]) -> Keypoints:
    """The source's keypoints with regions opened by ``amounts`` (its own pose and expression otherwise)."""
    kp = source.keypoints
    moved = opening(kp.value[0].detach().double().cpu().numpy(), face.landmarks, face.regions, amounts)
    value = kp.value + torch.from_numpy(moved.displacement).to(kp.value)[None]
    jacobian = None
    if kp.jacobian is not None:
        jacobian = torch.from_numpy(moved.stretch).to(kp.jacobian)[None] @ kp.jacobian
    return Keypoints(value, jacobian)


def solve_source_openness(pipeline: DaGANPipeline, source: SourceState, face: SourceFace, analyzer,
                          targets: dict[str, float]) -> OpennessResult:
    """Solve the opening amounts of ``targets`` on this source (see :mod:`dagan.motion.openness`)."""

    def measure(amounts: dict[str, float]) -> Optional[dict[str, float]]:
        frame = to_uint8_batch(pipeline.generate(source, opened_keypoints(source, face, amounts)).prediction)[0]
        return measure_openness(analyzer, frame)

    return solve_openness(measure, targets)


@torch.no_grad()
def motion_editor(pipeline: DaGANPipeline, source_image: Optional[np.ndarray], control: MotionControl,
                  analyzer=None, recorder=None, source: Optional[SourceState] = None,
                  show_regions: bool = False) -> MotionEditor:
    """The :class:`MotionEditor` of ``control`` for one source (``source_image``, or an already prepared
    ``source``). analyzer: a face analyzer (``dagan.faces.get_face_analyzer()``), needed by regions and openness
    targets. show_regions: also colour the keypoints by region for ``--visualize`` when a face is found.
    The editor's ``report`` lists what the user should be told."""
    if not (control.needs_regions or show_regions):
        return MotionEditor(control, recorder=recorder)
    if analyzer is None:
        if control.needs_regions:
            raise ValueError(NEEDS_ANALYZER)
        return MotionEditor(control, recorder=recorder)
    source = source if source is not None else pipeline.prepare_source(source_image)
    face = find_source_face(pipeline, source, analyzer)
    if face is None:
        if control.needs_regions:
            raise ValueError("no face found in the source at the model's resolution, so its keypoints cannot be "
                             "given face regions (needed by --region_scale, --still and openness targets)")
        return MotionEditor(control, recorder=recorder)
    moved, result = None, None
    report = [f"face regions of the {len(face.regions)} keypoints: {describe_regions(face.regions)}"]
    targets = control.openness_targets()
    if targets:
        result = solve_source_openness(pipeline, source, face, analyzer, targets)
        moved = opening(source.keypoints.value[0].detach().double().cpu().numpy(), face.landmarks, face.regions,
                        result.amounts)
        report.append(result.describe())
        empty = [name for name in targets if not np.any(face.regions == REGIONS.index(name))]
        if empty:
            report.append(f"warning: no keypoint of this model sits on the {' or '.join(empty)}; the target cannot "
                          "move them")
    editor = MotionEditor(control, face.regions if control.needs_regions else None, moved, recorder)
    editor.colors = region_colors(face.regions)
    editor.report.extend(report)
    editor.openness_result = result
    return editor


def animate_motion(pipeline: DaGANPipeline, source_image: np.ndarray, motion: Motion, relative: bool = True,
                   adapt_scale: bool = True, edit: Optional[MotionEditor] = None) -> Iterator[AnimatedFrame]:
    """Frames of ``source_image`` driven by a motion file's keypoints (``--driving_motion``), batch by batch as
    :meth:`~dagan.inference.DaGANPipeline.animate` would have run the video."""
    return pipeline.animate_keypoints(source_image, motion.batches(pipeline.batch_size), motion.anchor, relative,
                                      adapt_scale, edit)
