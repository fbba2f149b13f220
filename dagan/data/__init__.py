"""Training data: the video store (frame folders and video files), datasets, augmentation, sampling.

    dataset = FramesDataset.from_config(config.dataset_params, is_train=True, seed=config_seed)
    dataset = DatasetRepeater(dataset, config.train_params.num_repeats)
    sampler = make_sampler(dataset, seed, rank, world_size)
    sampler.set_start(step * global_batch_size)   # resume exactly where a run stopped

With ``dataset_params.format: shards`` the same datasets read tar shards (`dagan.data.shards`) and
``make_sampler`` returns a `ShardSampler` that keeps each rank on its own shards.

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
    ShardSampler,
    make_sampler,
)
from dagan.data.frames import Clip, DatasetError, VideoItem, VideoStore
from dagan.data.shards import ShardSettings, ShardStore, load_index, make_shards, verify_shards

__all__ = [
    "AugmentationDraw",
    "Clip",
    "DatasetError",
    "DatasetRepeater",
    "DepthTripletDataset",
    "FramesDataset",
    "ResumableSampler",
    "SeededDataset",
    "ShardSampler",
    "ShardSettings",
    "ShardStore",
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
    "load_index",
    "make_shards",
    "make_sampler",
    "rgb_to_hsv",
    "verify_shards",
]
