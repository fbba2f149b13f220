"""Motion you can direct, for every driver (video, image, speech, motion file): the pose/expression split of
keypoint motion (:mod:`~dagan.motion.split`), its edits (:mod:`~dagan.motion.control`: ``--animate``,
``--pose_scale``, ``--expression_scale``, region scales), face regions and openness (:mod:`~dagan.motion.regions`,
:mod:`~dagan.motion.openness`), motion files (:mod:`~dagan.motion.files`) and the driver that ties them to a
pipeline (:mod:`~dagan.motion.driver`).

This floor sits between ``dagan.faces`` (which uses it) and ``dagan.inference`` (which it drives): the pipeline
takes a :class:`MotionEditor` as its ``edit`` callable and never imports this package.
"""
from dagan.motion.control import ANIMATE, MotionControl, MotionEditor, edit_keypoints, parse_region_scales, parse_still
from dagan.motion.driver import animate_motion, find_source_face, measure_openness, motion_editor
from dagan.motion.files import (Motion, MotionFileError, MotionRecorder, check_keypoint_count, load_motion, make_motion,
                                save_motion)
from dagan.motion.openness import OpennessResult, solve_openness
from dagan.motion.regions import REGIONS, assign_regions, eye_openness, mouth_openness, openness
from dagan.motion.split import SplitMotion, compose_motion, fit_pose, split_motion

__all__ = ["ANIMATE", "MotionControl", "MotionEditor", "edit_keypoints", "parse_region_scales", "parse_still",
           "animate_motion", "find_source_face", "measure_openness", "motion_editor", "Motion", "MotionFileError",
           "MotionRecorder", "check_keypoint_count", "load_motion", "make_motion", "save_motion", "OpennessResult",
           "solve_openness", "REGIONS", "assign_regions", "eye_openness", "mouth_openness", "openness", "SplitMotion",
           "compose_motion", "fit_pose", "split_motion"]
