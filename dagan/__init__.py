"""dagan: depth-aware talking-head video generation (DaGAN, CVPR 2022, and DaGAN++)."""

__version__ = "0.1.0"

from dagan.inference import DaGANPipeline  # noqa: E402
from dagan.model import DaGAN  # noqa: E402

__all__ = ["DaGAN", "DaGANPipeline", "__version__"]
