"""Offline measures of a speech-driven result: lip sync (mouth opening vs audio energy, lag scan), head-pose
statistics against the target's clip, and with SyncNet's weights LSE-D / LSE-C (Wav2Lip's protocol). See
``dagan.eval.lipsync``. Needs the ``[faces]`` extra (68 landmarks).

    python scripts/evaluate_lipsync.py --video talking.mp4 --target_video target.mp4 --out lipsync.json
    python scripts/evaluate_lipsync.py --video talking.mp4 --syncnet_weights syncnet_v2.model  # + lse_d, lse_c
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Lip-sync lag scan, head-pose statistics and (with SyncNet's "
                                                 "weights) LSE-D/LSE-C of a talking video.")
    parser.add_argument("--video", required=True, help="the generated video")
    parser.add_argument("--audio", default=None, help="the speech (default: the video's own audio track)")
    parser.add_argument("--target_video", default=None, help="a clip of the target: pose std / velocity ratios")
    parser.add_argument("--syncnet_weights", default=None,
                        help="syncnet_python's syncnet_v2.model (never downloaded): adds lse_d (lower is better), "
                             "lse_c (higher is better) and lse_offset (frames, positive: the audio comes early)")
    parser.add_argument("--device", default="cpu", help="torch device for SyncNet: cpu, cuda, mps or auto")
    parser.add_argument("--max_lag", type=int, default=10, help="lags scanned, frames")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from dagan.audio import load_audio
    from dagan.eval.lipsync import lip_sync_scan, load_syncnet, lse_scores, pose_ratios, track_faces
    from dagan.faces import MissingFaceBackend, get_face_analyzer
    from dagan.inference import InferenceError, resolve_device
    from dagan.io import open_video
    from dagan.io.files import atomic_write_text, guard_output

    try:
        guard_output(args.out, [args.video, args.audio, args.target_video, args.syncnet_weights], "--out",
                     "JSON results")
        network = load_syncnet(args.syncnet_weights, resolve_device(args.device)) if args.syncnet_weights else None
        analyzer = get_face_analyzer("auto")
        video = open_video(args.video)
        generated = track_faces(video, analyzer)
        scan = lip_sync_scan(generated.mouth, load_audio(args.audio or args.video), video.fps, args.max_lag)
        peak = max(scan, key=scan.get)
        results = {"frames": len(generated.mouth), "faces_found": int((generated.mouth == generated.mouth).sum()),
                   "lag_scan": {str(lag): round(value, 4) for lag, value in scan.items()}, "peak_lag": peak,
                   "peak_correlation": round(scan[peak], 4)}
        if network is not None:
            lse = lse_scores(args.video, network, args.audio, analyzer)
            results.update(lse_d=round(lse.lse_d, 4), lse_c=round(lse.lse_c, 4), lse_offset=lse.offset)
        if args.target_video:
            target = track_faces(open_video(args.target_video), analyzer)
            ratios = pose_ratios(generated.pose, target.pose)
            results["pose_std_ratio"] = dict(zip(("pitch", "yaw", "roll"), ratios.std.round(3).tolist()))
            results["pose_velocity_ratio"] = dict(zip(("pitch", "yaw", "roll"), ratios.velocity_std.round(3).tolist()))
    except (ValueError, MissingFaceBackend, ImportError, InferenceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
