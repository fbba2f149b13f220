#!/usr/bin/env python
"""Animate a portrait live from a camera, a network stream or a video played in real time (see docs/live.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.cli.live import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
