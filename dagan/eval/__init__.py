"""Evaluation: pixel metrics (L1, SSIM, PSNR), LPIPS from user weight files, face metrics (AKD, AED, CSIM, PRMSE)
and the protocols that run them (files, reconstruction from a checkpoint, same-/cross-identity frame pairs).

    from dagan.eval import build_scorer, evaluate_files
    scorer = build_scorer(["l1", "ssim", "psnr", "akd", "aed"])
    report = evaluate_files(scorer, "generated/", "reference/")
    print(report.table()); report.write_json("results.json"); report.write_csv("per_item.csv")

``scripts/evaluate.py`` is the command line for all of it. Nothing here imports torchvision, lpips, piq,
torchmetrics or py-feat, and nothing is downloaded.
"""
from dagan.eval.face_metrics import (
    FACE_METRICS,
    IDENTITY_NOTE,
    FaceMeasurement,
    FaceMeasurer,
    face_metric_backends,
    head_pose,
    identity_distance,
    identity_similarity,
    landmark_distance,
    pose_squared_error,
    score_faces,
)
from dagan.eval.lpips import LPIPS, LPIPS_NETS, LPIPSWeightsMissing, load_lpips, lpips_distance, lpips_paths_from_env
from dagan.eval.metrics import METRIC_NAMES, METRICS, MetricSpec, MetricTotal, l1_distance, psnr, ssim
from dagan.eval.protocols import (
    FramePair,
    FrameRef,
    ItemPaths,
    Share,
    evaluate_files,
    evaluate_pairs,
    evaluate_reconstruction,
    pair_items,
    read_pairs,
)
from dagan.eval.scoring import EvaluationReport, FrameScorer, ItemResult, build_scorer, select_metrics

__all__ = [
    "Share",
    "FACE_METRICS",
    "IDENTITY_NOTE",
    "LPIPS",
    "LPIPS_NETS",
    "METRICS",
    "METRIC_NAMES",
    "EvaluationReport",
    "FaceMeasurement",
    "FaceMeasurer",
    "FramePair",
    "FrameRef",
    "FrameScorer",
    "ItemPaths",
    "ItemResult",
    "LPIPSWeightsMissing",
    "MetricSpec",
    "MetricTotal",
    "build_scorer",
    "evaluate_files",
    "evaluate_pairs",
    "evaluate_reconstruction",
    "face_metric_backends",
    "head_pose",
    "identity_distance",
    "identity_similarity",
    "l1_distance",
    "landmark_distance",
    "load_lpips",
    "lpips_distance",
    "lpips_paths_from_env",
    "pair_items",
    "pose_squared_error",
    "psnr",
    "read_pairs",
    "score_faces",
    "select_metrics",
    "ssim",
]
