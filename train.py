#!/usr/bin/env python
"""Train DaGAN from a YAML config. Run ``python train.py --help`` for the options."""
import sys

from dagan.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
