"""Training data: the video store (frame folders and video files), datasets, augmentation, sampling.

    dataset = FramesDataset.from_config(config.dataset_params, is_train=True, seed=config_seed)
    dataset = DatasetRepeater(dataset, config.train_params.num_repeats)
    sampler = make_sampler(dataset, seed, rank, world_size)
    sampler.set_start(step * global_batch_size)   # resume exactly where a run stopped

With ``dataset_params.format: stream`` the same datasets read a streaming dataset (`dagan.data.stream`, on litdata:
a local folder or an s3://, gs://, azure://, https:// root) with the same sampler.

See `dagan.data.datasets` for the determinism scheme and `dagan.data.frames` for the accepted layouts.
"""
from dagan.data.augmentation import (
    AugmentationDraw,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_augmentation,
    color_jitter,
    draw_augmentation,
    hsv_to_rgb,
    rgb_to_hsv,
)
from dagan.data.datasets import (
    DatasetRepeater,
    DepthTripletDataset,
    FramesDataset,
    ResumableSampler,
    SeededDataset,
    make_sampler,
)
from dagan.data.frames import Clip, DatasetError, VideoItem, VideoStore
from dagan.data.stream import StreamSettings, StreamStore, convert_tar_shards, make_stream, verify_stream

__all__ = [
    "AugmentationDraw",
    "Clip",
    "DatasetError",
    "DatasetRepeater",
    "DepthTripletDataset",
    "FramesDataset",
    "ResumableSampler",
    "SeededDataset",
    "StreamSettings",
    "StreamStore",
    "VideoItem",
    "VideoStore",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_augmentation",
    "color_jitter",
    "draw_augmentation",
    "hsv_to_rgb",
    "convert_tar_shards",
    "make_sampler",
    "make_stream",
    "rgb_to_hsv",
    "verify_stream",
]
