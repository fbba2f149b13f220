"""dagan: depth-aware talking-head video generation (DaGAN, CVPR 2022, and DaGAN++)."""

__version__ = "0.1.0"
