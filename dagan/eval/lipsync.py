"""Offline measures of audio-driven results: lip sync from rendered frames, and head-pose statistics.

* Mouth opening: the inner-lip gap of the 68 iBUG landmarks (mean of |62-66|, |61-67|, |63-65|, 0-based 61..67)
  divided by the mouth width (|48-54|), per frame: scale-free, NaN without a face.
* Lip sync: the correlation of the mouth opening with the audio energy (dB per frame), scanned over lags of
  +-10 frames; a synced video peaks at lag 0 (positive lag: the mouth trails the audio).
* Head pose: per-axis (pitch, yaw, roll) std and frame-to-frame velocity std of the generated video against
  the target's clip, as ratios (1 = the target's amount of motion).
* LSE-C / LSE-D (Prajwal et al. 2020) need SyncNet and its weights, which ship with neither this project nor
  PyPI: ``lse_scores`` refuses with a message saying so.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import numpy as np

from dagan.audio.decode import Audio
from dagan.audio.features import frame_energy_db, frame_times
from dagan.audio.prepare import lagged_correlation

INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
MOUTH_CORNERS = (48, 54)


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap / mouth width of one face's (68, 2) landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    gap = np.mean([np.linalg.norm(points[upper] - points[lower]) for upper, lower in INNER_LIP_PAIRS])
    return float(gap / max(np.linalg.norm(points[MOUTH_CORNERS[0]] - points[MOUTH_CORNERS[1]]), 1e-6))


class FaceTrack(NamedTuple):
    """Per frame: mouth opening (T,) and head pose (T, 3) pitch/yaw/roll degrees; NaN where no face was found."""

    mouth: np.ndarray
    pose: np.ndarray


def track_faces(frames: Iterable[np.ndarray], analyzer) -> FaceTrack:
    """Landmarks of every frame -> mouth opening and head pose (needs the ``[faces]`` extra)."""
    mouth, pose = [], []
    for frame in frames:
        points = analyzer.landmarks(frame)
        if points is None:
            mouth.append(np.nan)
            pose.append((np.nan,) * 3)
            continue
        mouth.append(mouth_opening(points))
        pose.append(tuple(analyzer.head_pose(points, (frame.shape[1], frame.shape[0]))))
    return FaceTrack(np.array(mouth), np.array(pose, dtype=np.float64).reshape(-1, 3))


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN entries (T,); all-NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64).copy()
    valid = np.isfinite(values)
    if valid.any() and not valid.all():
        values[~valid] = np.interp(np.flatnonzero(~valid), np.flatnonzero(valid), values[valid])
    return values


def lip_sync_scan(mouth: np.ndarray, audio: Audio, fps: float, max_lag: int = 10) -> dict[int, float]:
    """Correlation of the mouth opening (T,) with the audio energy at each lag in [-max_lag, max_lag] frames."""
    energy = frame_energy_db(audio, frame_times(len(mouth), fps), 1.0 / fps)
    mouth = fill_gaps(mouth)
    return {lag: lagged_correlation(energy, mouth, lag) for lag in range(-max_lag, max_lag + 1)}


class PoseRatios(NamedTuple):
    """Generated / target per-axis (pitch, yaw, roll) std and velocity std."""

    std: np.ndarray
    velocity_std: np.ndarray


def pose_ratios(generated: np.ndarray, target: np.ndarray) -> PoseRatios:
    """Ratios of the spread of two (T, 3) pose tracks (NaN frames dropped)."""
    def spread(track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        track = track[np.isfinite(track).all(1)]
        return track.std(0), np.diff(track, axis=0).std(0)

    (generated_std, generated_velocity), (target_std, target_velocity) = spread(generated), spread(target)
    return PoseRatios(generated_std / np.maximum(target_std, 1e-6), generated_velocity / np.maximum(target_velocity, 1e-6))


def lse_scores(video: str, syncnet_weights: Optional[str]) -> dict[str, float]:
    """LSE-C / LSE-D with SyncNet. Not available: refuses with what is needed."""
    raise ValueError("LSE-C/LSE-D need SyncNet and its weights (syncnet_v2.model from the SyncNet authors), which "
                     "this project does not implement yet; use the offline lip-sync scan (--audio) instead"
                     + (f" (got --syncnet_weights {syncnet_weights!r})" if syncnet_weights else ""))
