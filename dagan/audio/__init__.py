"""Audio-driven talking heads (Yi et al. 2020, "Audio-driven Talking Face Video Generation with Learning-based
Personalized Head Pose") on DaGAN keypoints: decoding, features, the motion representation, training data and
inference. The networks live in ``dagan/networks/audio_motion.py`` and ``dagan/networks/head_pose.py``."""
from dagan.audio.decode import SAMPLE_RATE, Audio, load_audio, write_wav
from dagan.audio.features import feature_windows, frame_times, log_mel, num_video_frames, silence_flags

__all__ = ["SAMPLE_RATE", "Audio", "feature_windows", "frame_times", "load_audio", "log_mel", "num_video_frames",
           "silence_flags", "write_wav"]
