"""Synthetic talking heads with exact ground truth, one concept per module:

- :mod:`~dagan.data.synthetic.heads`: the procedural head, ray-cast with known depth, pose and intrinsics;
- :mod:`~dagan.data.synthetic.dataset`: depth-stage triplets and GAN-stage pairs over rendered clips;
- :mod:`~dagan.data.synthetic.talking`: speech (espeak-ng phonemes) driving the head's jaw, for the speech tests.

The heads' public names are importable from here (``from dagan.data.synthetic import render_clip``).
"""
from dagan.data.synthetic.heads import (
    BACKGROUND_DEPTH,
    HEAD_DISTANCE,
    HeadShape,
    MotionRanges,
    SyntheticClip,
    make_intrinsics,
    open_jaw,
    relative_pose,
    render_clip,
    render_frame,
    warp_points,
)

__all__ = ["BACKGROUND_DEPTH", "HEAD_DISTANCE", "HeadShape", "MotionRanges", "SyntheticClip", "make_intrinsics",
           "open_jaw", "relative_pose", "render_clip", "render_frame", "warp_points"]
