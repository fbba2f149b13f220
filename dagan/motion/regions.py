"""Face regions of DaGAN's keypoints, and the eye and mouth openness of a face's 68 landmarks.

DaGAN's keypoints are unsupervised: which keypoint follows the mouth differs between checkpoints and, a little,
between faces. So the assignment is measured for each model and source: every keypoint of the source goes to the
region of its nearest landmark among the source face's 68 (iBUG layout), unless it lies farther than
``MAX_DISTANCE`` times the distance between the eye centres from every landmark (a keypoint on the hair, the
neck or the background), when it goes to ``rest``.

Regions (landmark indices, 0-based): eyes 36-47; brows 17-26; mouth 48-67 with the chin 5-11 (the jaw opens the
mouth); rest: the jaw line 0-4, 12-16 and the nose 27-35.

Openness (dimensionless, measured on 68 landmarks):

* eyes: the eye aspect ratio (Soukupova and Cech 2016), (|p37 - p41| + |p38 - p40|) / (2 |p36 - p39|), averaged
  over both eyes: about 0.25-0.35 open, below 0.1 closed;
* mouth: the inner-lip gap over the mouth width, mean(|p61 - p67|, |p62 - p66|, |p63 - p65|) / |p48 - p54|: 0
  closed, about 0.3 talking, 0.6 and more wide open.

Opening a region (the eye and mouth targets of :mod:`dagan.motion.openness`) stretches its keypoints along the
face's vertical axis (perpendicular to the eye line) about a hinge: the mouth's keypoints below the upper inner
lip move down by ``amount`` times their distance below it (the jaw drops), each eye's keypoints above its lower
lid move up by ``amount`` times their height above it (the lids part). ``amount`` -1 closes the region onto its
hinge; 0 leaves it as it is. The Jacobians of the moved keypoints are stretched the same way, but by no less than
``MIN_STRETCH`` along the vertical axis: DaGAN inverts driving Jacobians, and a shut region's (stretched by 0)
would be singular and turn the frame into NaN.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

REGIONS = ("eyes", "brows", "mouth", "rest")
OPENABLE = ("eyes", "mouth")
MAX_DISTANCE = 0.6  # x the distance between the eye centres
MIN_STRETCH = 0.1  # the least vertical stretch of an opened region's Jacobians (amount -1 would give 0)
# Colours of the regions in --visualize (RGB): eyes blue, brows green, mouth red, rest grey.
REGION_COLORS = {"eyes": (40, 120, 255), "brows": (40, 200, 60), "mouth": (255, 40, 40), "rest": (160, 160, 160)}

LEFT_EYE, RIGHT_EYE = tuple(range(36, 42)), tuple(range(42, 48))  # left/right in the image
MOUTH_OUTER_CORNERS = (48, 54)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
UPPER_INNER_LIP = (61, 62, 63)


def landmark_regions() -> np.ndarray:
    """The region index (into :data:`REGIONS`) of each of the 68 landmarks: (68,) int."""
    regions = np.full(68, REGIONS.index("rest"), dtype=np.int64)
    regions[36:48] = REGIONS.index("eyes")
    regions[17:27] = REGIONS.index("brows")
    regions[48:68] = REGIONS.index("mouth")
    regions[5:12] = REGIONS.index("mouth")
    return regions


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"face regions need 68 landmarks (68, 2), got an array of shape {landmarks.shape}")
    return landmarks


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eye centres (the face's size)."""
    landmarks = check_landmarks(landmarks)
    return float(np.linalg.norm(landmarks[list(RIGHT_EYE)].mean(0) - landmarks[list(LEFT_EYE)].mean(0)))


def assign_regions(keypoints: np.ndarray, landmarks: np.ndarray, max_distance: float = MAX_DISTANCE) -> np.ndarray:
    """Region index (K,) of each keypoint (K, 2), from the face's 68 landmarks (68, 2) in the same coordinates."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    landmarks = check_landmarks(landmarks)
    distances = np.linalg.norm(keypoints[:, None, :] - landmarks[None], axis=-1)  # (K, 68)
    nearest = distances.argmin(1)
    regions = landmark_regions()[nearest]
    far = distances.min(1) > max_distance * eye_distance(landmarks)
    regions[far] = REGIONS.index("rest")
    return regions


def region_names(regions: np.ndarray) -> list[str]:
    return [REGIONS[int(index)] for index in regions]


def region_colors(regions: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 colours of the keypoints' regions (:data:`REGION_COLORS`)."""
    return np.array([REGION_COLORS[name] for name in region_names(regions)], dtype=np.uint8)


def describe_regions(regions: np.ndarray) -> str:
    """One line: which keypoints each region holds, e.g. ``eyes 2,7 | brows - | mouth 0,4,9 | rest 1,3,5,6,8``."""
    parts = []
    for index, name in enumerate(REGIONS):
        members = [str(k) for k in np.flatnonzero(np.asarray(regions) == index)]
        parts.append(f"{name} {','.join(members) if members else '-'}")
    return " | ".join(parts)


# Openness.
def eye_openness(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (see the module docstring)."""
    landmarks = check_landmarks(landmarks)
    ratios = []
    for eye in (LEFT_EYE, RIGHT_EYE):
        p = landmarks[list(eye)]
        vertical = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
        ratios.append(vertical / (2.0 * max(np.linalg.norm(p[0] - p[3]), 1e-9)))
    return float(np.mean(ratios))


def mouth_openness(landmarks: np.ndarray) -> float:
    """Inner-lip gap over the mouth width (see the module docstring)."""
    landmarks = check_landmarks(landmarks)
    gap = np.mean([np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in INNER_LIP_PAIRS])
    width = np.linalg.norm(landmarks[MOUTH_OUTER_CORNERS[0]] - landmarks[MOUTH_OUTER_CORNERS[1]])
    return float(gap / max(width, 1e-9))


def openness(landmarks: np.ndarray) -> dict[str, float]:
    """{"eyes": eye openness, "mouth": mouth openness} of one face's landmarks."""
    return {"eyes": eye_openness(landmarks), "mouth": mouth_openness(landmarks)}


def face_down(landmarks: np.ndarray) -> np.ndarray:
    """Unit vector (2,) along the face's vertical axis, pointing from the eyes to the mouth."""
    landmarks = check_landmarks(landmarks)
    left, right = landmarks[list(LEFT_EYE)].mean(0), landmarks[list(RIGHT_EYE)].mean(0)
    across = right - left
    down = np.array([-across[1], across[0]]) / max(np.linalg.norm(across), 1e-9)
    if down @ (landmarks[48:68].mean(0) - 0.5 * (left + right)) < 0:
        down = -down
    return down


class Opening(NamedTuple):
    """How opening a region moves each keypoint: mask (K,) bool of the keypoints that move (those of the opened
    regions), displacement (K, 2) of the keypoints and stretch (K, 2, 2), the linear map their Jacobians follow
    (identity where nothing moves)."""

    mask: np.ndarray
    displacement: np.ndarray
    stretch: np.ndarray


def opening(keypoints: np.ndarray, landmarks: np.ndarray, regions: np.ndarray, amounts: dict[str, float]) -> Opening:
    """The keypoint motion that opens (amount > 0) or closes (amount < 0, -1 = shut) the regions of ``amounts``
    ({"eyes": a, "mouth": b}; see the module docstring). keypoints (K, 2), landmarks (68, 2) in the same
    coordinates, regions (K,) from :func:`assign_regions`."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    landmarks = check_landmarks(landmarks)
    regions = np.asarray(regions)
    num_kp = len(keypoints)
    down = face_down(landmarks)
    projector = np.outer(down, down)
    mask = np.zeros(num_kp, dtype=bool)
    displacement = np.zeros((num_kp, 2))
    stretch = np.tile(np.eye(2), (num_kp, 1, 1))
    for name, amount in amounts.items():
        if name not in OPENABLE:
            raise ValueError(f"only {' and '.join(OPENABLE)} can be opened, not {name!r}")
        members = np.flatnonzero(regions == REGIONS.index(name))
        mask[members] = True
        for k in members:
            if name == "mouth":
                hinge = landmarks[list(UPPER_INNER_LIP)].mean(0)
                height = max(float((keypoints[k] - hinge) @ down), 0.0)  # below the upper lip
            else:
                eye = LEFT_EYE if _nearest_eye(keypoints[k], landmarks) == 0 else RIGHT_EYE
                hinge = landmarks[[eye[4], eye[5]]].mean(0)  # the lower lid
                height = min(float((keypoints[k] - hinge) @ down), 0.0)  # above the lower lid (negative)
            if height != 0.0:
                displacement[k] = amount * height * down
                stretch[k] = np.eye(2) + max(amount, MIN_STRETCH - 1.0) * projector
    return Opening(mask, displacement, stretch)


def _nearest_eye(point: np.ndarray, landmarks: np.ndarray) -> int:
    left, right = landmarks[list(LEFT_EYE)].mean(0), landmarks[list(RIGHT_EYE)].mean(0)
    return 0 if np.linalg.norm(point - left) <= np.linalg.norm(point - right) else 1
