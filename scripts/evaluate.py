#!/usr/bin/env python
"""Evaluate talking-head videos: pixel, perceptual and face metrics, from files or directly from a checkpoint.

    python scripts/evaluate.py --generated out/ --reference real/ --source sources/ \
        --output results.json --csv per_item.csv
    python scripts/evaluate.py --checkpoint run/checkpoints/last.pt --protocol reconstruction \\
        --dataset data/vox --num_videos 50 --output eval/
    python scripts/evaluate.py --checkpoint DaGAN_vox_adv_256.pth.tar --depth_checkpoint depth_face_model \\
        --protocol pairs --pairs pairs.csv --dataset data/vox --output eval_pairs/

All the work is done by ``dagan.eval``; this script parses arguments and calls it. The protocols keep each finished
item in OUTPUT/items/ (a rerun resumes) and run under torchrun, each rank taking its share:
    torchrun --nproc_per_node=8 scripts/evaluate.py --checkpoint ... --protocol pairs --pairs pairs.csv --output eval/
Comparing files shares the same way under torchrun; the ranks keep the finished items beside the JSON summary
(results.json -> results.items/, a rerun resumes).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dagan.eval import (LPIPS_NETS, METRIC_NAMES, Share, build_scorer, evaluate_files,  # noqa: E402
                        evaluate_pairs, evaluate_reconstruction, lpips_paths_from_env, select_metrics)
from dagan.inference import DaGANPipeline, resolve_device  # noqa: E402
from dagan.io.files import guard_output  # noqa: E402
from dagan.training.distributed import launch_share, use_local_gpu  # noqa: E402

EPILOG = """\
PATH (--generated, --reference, --source) is a video file, a folder of frames, or a folder of such items paired
by name (file stem / folder name). Items with different frame counts are compared on their first min(n, m) frames.
--metrics auto: l1,ssim,psnr, plus lpips when its weight files are given, akd,aed,prmse when a face backend is
installed, csim when there is a source (always in the protocols).

Pairs CSV (--protocol pairs): header source,driving[,driving_initial][,mode]; each cell an image path or
VIDEO:INDEX (video file or frame folder, 0-based frame); relative to --dataset, else to the CSV's folder. mode is
same or cross (default: same when source and driving come from the same video). Cross pairs use relative motion
with adapt_scale anchored at driving_initial (default VIDEO:0 of the driving video) and the metrics without ground
truth (akd, aed, prmse vs the driving frame, csim vs the source); same pairs use absolute keypoints and all metrics.

AED/CSIM use dlib's identity ResNet, a stand-in for the papers' OpenFace/ArcFace: not comparable with their tables.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    files = parser.add_argument_group("compare files")
    files.add_argument("--generated", help="generated video(s): PATH")
    files.add_argument("--reference", help="real video(s) to compare with: PATH")
    files.add_argument("--source", help="source image(s) for csim: an image/video (first frame) or a folder paired "
                       "by name")
    model = parser.add_argument_group("evaluate a checkpoint")
    model.add_argument("--checkpoint", help="a dagan checkpoint or the official DaGAN .pth.tar")
    model.add_argument("--depth_checkpoint", help="official depth folder (encoder.pth, depth.pth)")
    model.add_argument("--config", help="model config for an official checkpoint (default configs/vox-adv-256.yaml)")
    model.add_argument("--protocol", choices=["reconstruction", "pairs"], help="reconstruction: each ROOT/test "
                       "video from its first frame; pairs: the (source, driving) frame pairs of --pairs")
    model.add_argument("--dataset", help="dataset ROOT (reconstruction reads ROOT/test/<video>; pairs resolves "
                       "relative paths against it)")
    model.add_argument("--num_videos", type=int, default=None, help="evaluate only the first N test videos")
    model.add_argument("--pairs", help="pairs CSV (format below)")
    model.add_argument("--save_videos", action="store_true", help="write the generated videos (frames for pairs) "
                       "to OUTPUT/generated/")
    model.add_argument("--batch_size", type=int, default=None, help="driving frames per forward pass (default: "
                       "the fastest measured for the device)")
    common = parser.add_argument_group("metrics and output")
    common.add_argument("--metrics", default="auto", help=f"comma-separated: {','.join(METRIC_NAMES)}; or auto")
    common.add_argument("--backend", default="auto", choices=["auto", "dlib", "face_alignment"],
                        help="face backend for akd, aed, csim, prmse")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="for the model and LPIPS (face backends: see dagan.faces)")
    common.add_argument("--lpips_net", default="alex", choices=LPIPS_NETS)
    common.add_argument("--lpips_trunk", help="torchvision trunk weights (alexnet-owt-7be5be79.pth / "
                        "vgg16-397923af.pth); or $DAGAN_LPIPS_TRUNK")
    common.add_argument("--lpips_head", help="LPIPS v0.1 linear heads (alex.pth / vgg.pth from the lpips package); "
                        "or $DAGAN_LPIPS_HEAD")
    common.add_argument("--output", help="files: the JSON summary (default results.json); protocols: a folder "
                        "(results.json, per_item.csv, generated/)")
    common.add_argument("--csv", help="per-item CSV (protocols: default OUTPUT/per_item.csv)")
    common.add_argument("--no_progress", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint is None:
        if not (args.generated and args.reference):
            parser.error("give --generated and --reference, or --checkpoint with --protocol")
        return
    if args.protocol is None or args.output is None:
        parser.error("--checkpoint needs --protocol reconstruction|pairs and --output DIR")
    if args.protocol == "reconstruction" and not args.dataset:
        parser.error("--protocol reconstruction needs --dataset ROOT")
    if args.protocol == "pairs" and not args.pairs:
        parser.error("--protocol pairs needs --pairs CSV")


def output_paths(args: argparse.Namespace) -> tuple[Path, Optional[Path]]:
    """The JSON summary and the per-item CSV (None: no CSV) this run writes."""
    if args.checkpoint is None:
        return Path(args.output or "results.json"), Path(args.csv) if args.csv else None
    return Path(args.output) / "results.json", Path(args.csv) if args.csv else Path(args.output) / "per_item.csv"


def files_items_folder(json_path: Path) -> Path:
    """Where torchrun's ranks keep the finished items of the files protocol: beside the JSON summary
    (``results.json`` -> ``results.items/``)."""
    return json_path.with_suffix(".items")


def check_outputs(args: argparse.Namespace, json_path: Path, csv_path: Optional[Path]) -> None:
    """Refuse, before any work, outputs that would replace an input, each other or a file this project did not
    write (:func:`dagan.io.files.guard_output`)."""
    inputs = [args.generated, args.reference, args.source, args.checkpoint, args.depth_checkpoint, args.config,
              args.dataset, args.pairs, args.lpips_trunk, args.lpips_head]
    if args.checkpoint is not None:  # the protocols write into a folder (results, generated/)
        guard_output(args.output, inputs, "--output", "output folder", folder=True)
    elif launch_share()[1] > 1:  # torchrun: the ranks keep the finished items in a folder beside the summary
        guard_output(files_items_folder(json_path), inputs, "--output", "folder of finished items", folder=True)
    guard_output(json_path, inputs, "--output", "JSON summary")
    guard_output(csv_path, inputs, "--csv", "per-item CSV", others=[("--output", json_path)])


def run(args: argparse.Namespace) -> int:
    json_path, csv_path = output_paths(args)
    check_outputs(args, json_path, csv_path)
    trunk, head = lpips_paths_from_env(args.lpips_trunk, args.lpips_head)
    has_source = args.checkpoint is not None or args.source is not None
    metrics, notes = select_metrics(args.metrics, has_source, bool(trunk and head), args.backend)
    scorer = build_scorer(metrics, args.backend, args.lpips_net, trunk, head, device=resolve_device(args.device))
    progress = not args.no_progress
    rank, world = launch_share()  # under torchrun each rank takes its share of the items
    if args.checkpoint is None:
        # one process keeps no items; torchrun's ranks keep theirs beside the summary (a rerun resumes)
        share = Share(rank, world, files_items_folder(json_path)) if world > 1 else Share()
        report = evaluate_files(scorer, args.generated, args.reference, args.source, progress, share)
    else:
        use_local_gpu()
        pipeline = DaGANPipeline.load(args.checkpoint, args.depth_checkpoint, args.config, device=args.device,
                                      batch_size=args.batch_size)
        stat = os.stat(args.checkpoint)
        share = Share(rank, world, Path(args.output) / "items",  # finished items: a rerun resumes
                      model=f"{os.path.abspath(args.checkpoint)} {stat.st_size} {stat.st_mtime_ns}")
        if args.protocol == "reconstruction":
            report = evaluate_reconstruction(pipeline, scorer, args.dataset, args.num_videos, args.output,
                                             args.save_videos, progress, share)
        else:
            report = evaluate_pairs(pipeline, scorer, args.pairs, args.dataset, args.output, args.save_videos,
                                    progress, share)
        if report is not None:
            report.settings["checkpoint"] = args.checkpoint
    if report is None:
        print(f"rank {rank} of {world}: its items are done; the rank that finds every item done writes the "
              "report", file=sys.stderr)
        return 0
    report.notes = notes + report.notes
    report.write_json(json_path)
    if csv_path:
        report.write_csv(csv_path)
    print(report.table())
    print(f"wrote {json_path}" + (f" and {csv_path}" if csv_path else ""), file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, ImportError, RuntimeError, OSError) as error:  # MediaError, DatasetError, LPIPS, faces...
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
