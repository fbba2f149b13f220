"""Motion files: a driver's keypoint motion saved once (``--save_motion motion.npz``) and replayed on any portrait
(``--driving_motion motion.npz``) without the driving video, so the driver's face never leaves their machine.

A motion file is a NumPy ``.npz`` of plain arrays (read with ``allow_pickle=False``; a pickle is refused):

============================  ==================  ==========================================================
array                         shape               meaning
============================  ==================  ==========================================================
``format``                    ()  int             :data:`FORMAT` (1)
``driver``                    ()  str             video, image, speech or motion
``fps``                       ()  float           frames per second of the motion
``pose_model``                ()  str             affine or similarity (the split below)
``keypoints``                 (T, K, 2) float32   the driving keypoints of every frame (after ``--smooth``)
``jacobians``                 (T, K, 2, 2)        their Jacobians (absent for models without)
``anchor``                    (1, K, 2)           the anchor the relative motion is measured from
``anchor_jacobians``          (1, K, 2, 2)        its Jacobians
``pose``                      (T, 6)              head pose relative to the anchor, (A - I, b) (dagan.motion.split)
``local``                     (T, 6 K)            local residual (d, D); (T, 2 K) without Jacobians
============================  ==================  ==========================================================

The keypoints are the driver's, before any ``--animate`` / scale / region edit: the edits are applied when the
file is played, so one file serves every setting. Playing a file with the flags it was recorded with gives the
frames of the original run bit for bit.
"""
from __future__ import annotations

import io
import zipfile
from typing import NamedTuple, Optional

import numpy as np
import torch

from dagan.geometry import Keypoints
from dagan.motion.split import POSE_MODELS, ROBUST_STEPS, fit_pose_double

FORMAT = 1
DRIVERS = ("video", "image", "speech", "motion")


class MotionFileError(ValueError):
    """A motion file that cannot be used; the message is one line."""


class Motion(NamedTuple):
    """Driving keypoints (T, K, ...), the anchor (1, K, ...), fps, and the pose (T, 6) / local (T, 6 K) split."""

    keypoints: Keypoints
    anchor: Keypoints
    fps: float
    pose: torch.Tensor
    local: torch.Tensor
    pose_model: str = "affine"
    driver: str = "video"

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.value.shape[0])

    @property
    def num_kp(self) -> int:
        return int(self.keypoints.value.shape[1])

    def batches(self, batch_size: int, device: torch.device | str = "cpu"):
        """The driving keypoints ``batch_size`` frames at a time, on ``device``."""
        for start in range(0, self.num_frames, batch_size):
            yield _to(self.keypoints.index(slice(start, start + batch_size)), device)


def _to(keypoints: Keypoints, device) -> Keypoints:
    return Keypoints(keypoints.value.to(device), None if keypoints.jacobian is None else keypoints.jacobian.to(device))


def split_of(keypoints: Keypoints, anchor: Keypoints, pose_model: str = "affine") -> tuple[torch.Tensor, torch.Tensor]:
    """The pose (T, 6) and local (T, 6 K, or 2 K without Jacobians) motion of keypoints relative to the anchor
    (the robust pose fit that motion control uses)."""
    matrix, offset = fit_pose_double(anchor.value[0], keypoints.value, pose_model, ROBUST_STEPS)
    matrix, offset = matrix.float(), offset.float()
    inverse = torch.linalg.inv(matrix)
    local_value = torch.einsum("tij,tkj->tki", inverse, keypoints.value - offset[:, None]) - anchor.value
    pose = torch.cat([(matrix - torch.eye(2, dtype=matrix.dtype)).flatten(1), offset], dim=1)
    parts = [local_value.flatten(1)]
    if keypoints.jacobian is not None and anchor.jacobian is not None:
        local_jacobian = torch.einsum("tij,tkjl->tkil", inverse, keypoints.jacobian) - anchor.jacobian
        parts.append(local_jacobian.flatten(1))
    return pose, torch.cat(parts, dim=1)


def make_motion(keypoints: Keypoints, anchor: Keypoints, fps: float, driver: str = "video",
                pose_model: str = "affine", pose: Optional[torch.Tensor] = None,
                local: Optional[torch.Tensor] = None) -> Motion:
    """A :class:`Motion` of CPU float32 keypoints; the split is computed unless given (the speech model's own)."""
    keypoints, anchor = _to(_float(keypoints), "cpu"), _to(_float(anchor), "cpu")
    if pose is None or local is None:
        pose, local = split_of(keypoints, anchor, pose_model)
    return Motion(keypoints, anchor, float(fps), pose.detach().float().cpu(), local.detach().float().cpu(),
                  pose_model, driver)


def _float(keypoints: Keypoints) -> Keypoints:
    return Keypoints(keypoints.value.detach().float(),
                     None if keypoints.jacobian is None else keypoints.jacobian.detach().float())


def motion_bytes(motion: Motion) -> bytes:
    """The ``.npz`` file of a motion (plain arrays only)."""
    arrays = {"format": np.array(FORMAT, dtype=np.int64), "driver": np.array(motion.driver),
              "fps": np.array(motion.fps, dtype=np.float64), "pose_model": np.array(motion.pose_model),
              "keypoints": motion.keypoints.value.numpy(), "anchor": motion.anchor.value.numpy(),
              "pose": motion.pose.numpy(), "local": motion.local.numpy()}
    if motion.keypoints.jacobian is not None:
        arrays["jacobians"] = motion.keypoints.jacobian.numpy()
        arrays["anchor_jacobians"] = motion.anchor.jacobian.numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_motion(path, motion: Motion) -> None:
    """Write ``motion`` to ``path`` atomically (a crash never leaves half a file)."""
    from dagan.io.files import atomic_write_bytes

    atomic_write_bytes(path, motion_bytes(motion))


def load_motion(path, num_kp: Optional[int] = None) -> Motion:
    """Read a motion file, checking every array; ``num_kp``: the model's keypoint count, which the file must have.
    Raises :class:`MotionFileError` (one line) for a pickle, a truncated or damaged file, missing or misshapen
    arrays, non-finite values or another keypoint count."""
    name = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise MotionFileError(f"{name} is a single array, not a motion file (.npz saved by --save_motion)")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except MotionFileError:
        raise
    except FileNotFoundError:
        raise MotionFileError(f"the motion file {name} does not exist") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError) as error:
        raise MotionFileError(f"{name} is truncated or damaged ({_first_line(error)}); save the motion again "
                              "with --save_motion") from None
    except ValueError as error:
        if "pickle" in str(error).lower() or "object arrays" in str(error).lower():
            raise MotionFileError(f"{name} holds pickled data; motion files are plain arrays (.npz saved by "
                                  "--save_motion) and pickles are never loaded") from None
        raise MotionFileError(f"{name} is not a motion file ({_first_line(error)})") from None
    return _check(arrays, name, num_kp)


def check_keypoint_count(motion: Motion, num_kp: int, name: str = "the motion file") -> None:
    """MotionFileError (one line) unless the motion has the model's keypoint count."""
    _check_count(motion.num_kp, num_kp, str(name))


def _check_count(count: int, num_kp: Optional[int], name: str) -> None:
    if num_kp is not None and count != num_kp:
        raise MotionFileError(f"{name} holds {count} keypoints per frame but the model has {num_kp}; record the "
                              "motion with this model's checkpoint")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check(arrays: dict[str, np.ndarray], name: str, num_kp: Optional[int]) -> Motion:
    for key in ("keypoints", "anchor", "fps"):
        if key not in arrays:
            raise MotionFileError(f"{name} is not a motion file: it has no {key!r} array (.npz saved by "
                                  "--save_motion)")
    if "format" in arrays and int(np.asarray(arrays["format"]).reshape(-1)[0]) > FORMAT:
        raise MotionFileError(f"{name} was written by a newer version (format {int(arrays['format'])}); update dagan")
    keypoints = np.asarray(arrays["keypoints"])
    if keypoints.ndim != 3 or keypoints.shape[2] != 2 or keypoints.shape[0] < 1 or keypoints.shape[1] < 1:
        raise MotionFileError(f"{name}: keypoints must have shape (frames, keypoints, 2), got {keypoints.shape}")
    frames, count = keypoints.shape[:2]
    _check_count(count, num_kp, name)
    expected = {"anchor": (1, count, 2), "jacobians": (frames, count, 2, 2), "anchor_jacobians": (1, count, 2, 2),
                "pose": (frames, 6)}
    for key, shape in expected.items():
        if key in arrays and tuple(arrays[key].shape) != shape:
            raise MotionFileError(f"{name}: {key} must have shape {shape} for {frames} frames of {count} keypoints, "
                                  f"got {tuple(arrays[key].shape)}")
    if ("jacobians" in arrays) != ("anchor_jacobians" in arrays):
        raise MotionFileError(f"{name}: jacobians and anchor_jacobians come together; one is missing")
    for key in ("keypoints", "anchor", "jacobians", "anchor_jacobians", "pose", "local"):
        if key in arrays and (not np.issubdtype(arrays[key].dtype, np.floating) or not np.isfinite(arrays[key]).all()):
            raise MotionFileError(f"{name}: {key} must hold finite floating-point numbers")
    fps = float(np.asarray(arrays["fps"]).reshape(-1)[0]) if np.asarray(arrays["fps"]).size == 1 else float("nan")
    if not np.isfinite(fps) or fps <= 0:
        raise MotionFileError(f"{name}: fps must be a positive number, got {arrays['fps']}")
    pose_model = str(arrays.get("pose_model", "affine"))
    if pose_model not in POSE_MODELS:
        raise MotionFileError(f"{name}: pose_model must be one of {', '.join(POSE_MODELS)}, got {pose_model!r}")
    driver = str(arrays.get("driver", "video"))
    jacobians = arrays.get("jacobians")
    value = Keypoints(torch.from_numpy(keypoints.astype(np.float32)),
                      None if jacobians is None else torch.from_numpy(jacobians.astype(np.float32)))
    anchor_jacobians = arrays.get("anchor_jacobians")
    anchor = Keypoints(torch.from_numpy(np.asarray(arrays["anchor"], np.float32)),
                       None if anchor_jacobians is None else torch.from_numpy(anchor_jacobians.astype(np.float32)))
    local_size = count * (6 if jacobians is not None else 2)
    pose, local = arrays.get("pose"), arrays.get("local")
    if local is not None and tuple(local.shape) != (frames, local_size):
        raise MotionFileError(f"{name}: local must have shape {(frames, local_size)}, got {tuple(local.shape)}")
    if pose is None or local is None:
        return make_motion(value, anchor, fps, driver, pose_model)
    return Motion(value, anchor, fps, torch.from_numpy(pose.astype(np.float32)),
                  torch.from_numpy(local.astype(np.float32)), pose_model, driver)


class MotionRecorder:
    """Collects the driving keypoints a run uses (a :class:`~dagan.motion.control.MotionEditor`'s ``recorder``):
    ``recorder(kp_driving, anchor)`` per batch, then :meth:`motion` or :meth:`save`."""

    def __init__(self, fps: float, driver: str = "video", pose_model: str = "affine"):
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r}")
        self.fps, self.driver, self.pose_model = fps, driver, pose_model
        self.batches: list[Keypoints] = []
        self.anchor: Optional[Keypoints] = None

    def __call__(self, kp_driving: Keypoints, anchor: Keypoints) -> None:
        self.batches.append(_to(_float(kp_driving), "cpu"))
        if self.anchor is None:
            self.anchor = _to(_float(anchor), "cpu")

    def motion(self) -> Motion:
        if not self.batches:
            raise ValueError("no motion was recorded (no driving frame)")
        value = torch.cat([batch.value for batch in self.batches])
        jacobian = None if self.batches[0].jacobian is None else torch.cat([batch.jacobian for batch in self.batches])
        return make_motion(Keypoints(value, jacobian), self.anchor, self.fps, self.driver, self.pose_model)

    def save(self, path) -> Motion:
        motion = self.motion()
        save_motion(path, motion)
        return motion
