#!/usr/bin/env python
"""The quickstart's stages after the set-up (``bash scripts/quickstart.sh`` runs this in ``.venv``): prepare the
sample clip, train the depth stage, train the GAN stage, animate a held-out frame and write a side-by-side video.
Finished stages are skipped; an interrupted training stage resumes from its newest checkpoint. ``--next`` prints
the commands to run next on the trained model (``quickstart.sh`` ends with them).

    python scripts/quickstart.py                                  # everything into runs/quickstart
    python scripts/quickstart.py --set train_params.num_steps=50  # any config override, for both stages
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.cli.quickstart import QuickstartError, QuickstartPaths, print_next, run_quickstart, summary  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", default="runs/quickstart", help="where every stage writes (default: %(default)s)")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="training config (default: %(default)s)")
    parser.add_argument("--video", default="data/samples/driving.mp4", help="the clip to learn and to animate with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both training stages (repeatable)")
    parser.add_argument("--first_stage_number", type=int, default=1, help="number of the first stage in headings")
    parser.add_argument("--total_stages", type=int, default=None, help="stage count shown in headings")
    parser.add_argument("--next", action="store_true", help="only print the commands to run next (on the model in "
                        "--run_dir) and exit")
    args = parser.parse_args(argv)
    if args.next:
        print_next(QuickstartPaths(Path(args.run_dir)), args.video)
        return 0
    try:
        paths = run_quickstart(args.run_dir, args.config, args.video, args.overrides, args.first_stage_number,
                               args.total_stages)
        summary(paths, args.video)
    except QuickstartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
