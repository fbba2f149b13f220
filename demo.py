#!/usr/bin/env python
"""Animate a source portrait with a driving video. Run ``python demo.py --help`` for the options."""
import sys

from dagan.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
