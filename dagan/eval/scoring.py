"""What every evaluation protocol shares: choosing the metrics, the frame scorer, per-item results and the
report (table, JSON, CSV), and scoring a stream of (generated, reference) frame pairs.

Per-frame metric values are pooled into per-item means and summary means over all frames (see
:mod:`dagan.eval.metrics`); the protocols themselves are :mod:`dagan.eval.protocols`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import skimage.transform
from tqdm import tqdm

from dagan.eval.face_metrics import (FACE_METRICS, IDENTITY_NOTE, FaceMeasurement, FaceMeasurer,
                                     face_metric_backends, frame_face_values)
from dagan.eval.lpips import LPIPS, LPIPSWeightsMissing, load_lpips, lpips_distance, missing_weights_message
from dagan.eval.metrics import METRIC_NAMES, METRICS, PIXEL_BACKENDS, PIXEL_METRICS, MetricTotal
from dagan.faces import FaceAnalyzer, MissingFaceBackend, get_face_analyzer
from dagan.io import to_uint8
from dagan.io.files import atomic_write_text

__all__ = [
    "EvaluationReport",
    "FrameScorer",
    "ItemResult",
    "build_scorer",
    "select_metrics",
]

ALL_GROUP = "all"  # the summary row pooling every item


# Metric selection and the scorer.

def select_metrics(requested: str, has_source: bool, lpips_given: bool,
                   face_backend: str = "auto") -> tuple[list[str], list[str]]:
    """Metric names from ``--metrics`` and notes on what ``auto`` left out.

    requested: a comma-separated list of :data:`~dagan.eval.metrics.METRIC_NAMES`, or ``"auto"``: the pixel
    metrics, lpips when weight files are given, the face metrics when a face backend is installed, csim when
    there is a source. has_source: a source image exists (always in the protocols).
    Raises ValueError for unknown names or for csim without a source.
    """
    if requested.strip().lower() != "auto":
        names = [name.strip().lower() for name in requested.split(",") if name.strip()]
        unknown = [name for name in names if name not in METRICS]
        if unknown or not names:
            raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(METRIC_NAMES)} (comma-separated) or auto")
        if "csim" in names and not has_source:
            raise ValueError("csim compares the generated frames with the source image: give --source PATH")
        return list(dict.fromkeys(names)), []
    names, notes = ["l1", "ssim", "psnr"], []
    if lpips_given:
        names.append("lpips")
    else:
        notes.append("lpips left out: no --lpips_trunk/--lpips_head weight files")
    try:
        get_face_analyzer(face_backend)
        names += [name for name in FACE_METRICS if name != "csim" or has_source]
        if not has_source:
            notes.append("csim left out: no --source")
    except MissingFaceBackend as error:
        notes.append(f"face metrics left out: {error}")
    return [name for name in METRIC_NAMES if name in names], notes


class FrameScorer:
    """Per-frame values of the chosen metrics for one generated frame, its reference and the current source.

    metrics: metric names. analyzer: needed for the face metrics. lpips_model: needed for lpips.
    """

    def __init__(self, metrics: Sequence[str], analyzer: Optional[FaceAnalyzer] = None,
                 lpips_model: Optional[LPIPS] = None) -> None:
        self.metrics = list(metrics)
        face_metrics = [name for name in self.metrics if name in FACE_METRICS]
        if face_metrics and analyzer is None:
            raise MissingFaceBackend(f"{', '.join(face_metrics)} need a face backend (FaceAnalyzer)")
        if "lpips" in self.metrics and lpips_model is None:
            raise LPIPSWeightsMissing(missing_weights_message())
        self.analyzer, self.lpips_model = analyzer, lpips_model
        self.measurer = FaceMeasurer(analyzer, embeddings=bool({"aed", "csim"} & set(self.metrics)),
                                     poses="prmse" in self.metrics) if face_metrics else None
        self._source_key: Any = None
        self._source_face: Optional[FaceMeasurement] = None

    @property
    def backends(self) -> dict[str, str]:
        """The backend name of each chosen metric."""
        names = dict(PIXEL_BACKENDS)
        if self.lpips_model is not None:
            names["lpips"] = f"lpips-{self.lpips_model.net} (user weights)"
        if self.analyzer is not None:
            names.update(face_metric_backends(self.analyzer))
        return {name: names[name] for name in self.metrics}

    def settings(self) -> dict[str, Any]:
        return {"metrics": self.metrics,
                "face_backend": None if self.analyzer is None else repr(self.analyzer),
                "lpips_net": None if self.lpips_model is None else self.lpips_model.net}

    def set_source(self, source: Optional[np.ndarray], key: Any = None) -> bool:
        """Measure the source face for CSIM (once per ``key``); returns whether a face was found."""
        if key is not None and key == self._source_key:
            return self._source_face is not None and self._source_face.embedding is not None
        self._source_key = key
        found = self.measurer.measure(source) if self.measurer is not None and source is not None else None
        self._source_face = found
        return found is not None and found.embedding is not None

    def score(self, generated: np.ndarray, reference: np.ndarray,
              metrics: Optional[Sequence[str]] = None) -> dict[str, Optional[float]]:
        """Values for one frame (``None``: no face in one of the images). metrics: a subset (default: all)."""
        metrics = self.metrics if metrics is None else [name for name in metrics if name in self.metrics]
        values: dict[str, Optional[float]] = {}
        for name in metrics:
            if name in PIXEL_METRICS:
                values[name] = PIXEL_METRICS[name](generated, reference)
            elif name == "lpips":
                values[name] = lpips_distance(self.lpips_model, generated, reference)
        face_metrics = [name for name in metrics if name in FACE_METRICS]
        if face_metrics:
            needs_reference = any(METRICS[name].needs == "reference" for name in face_metrics)
            reference_face = self.measurer.measure(reference) if needs_reference else None
            values.update(frame_face_values(self.measurer.measure(generated), reference_face, self._source_face,
                                            face_metrics))
        return values


def build_scorer(metrics: Sequence[str], face_backend: str = "auto", lpips_net: str = "alex",
                 lpips_trunk: Optional[str] = None, lpips_head: Optional[str] = None,
                 device: Any = "cpu") -> FrameScorer:
    """A :class:`FrameScorer` with the face analyzer and LPIPS network that ``metrics`` need (checked up front,
    so a missing backend or weight file fails before any long work)."""
    analyzer = get_face_analyzer(face_backend) if set(metrics) & set(FACE_METRICS) else None
    lpips_model = load_lpips(lpips_net, lpips_trunk, lpips_head, device) if "lpips" in metrics else None
    return FrameScorer(metrics, analyzer, lpips_model)


# Results.

@dataclass
class ItemResult:
    """One evaluated item (a video or a frame pair): frames compared, per-metric totals, notes, extra CSV columns."""

    name: str
    totals: dict[str, MetricTotal]
    frames: int = 0
    group: str = ALL_GROUP
    notes: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str, metrics: Sequence[str], group: str = ALL_GROUP) -> "ItemResult":
        totals = {name_: MetricTotal(METRICS[name_].root_mean_square) for name_ in metrics}
        return cls(name, totals, group=group)

    def add(self, values: dict[str, Optional[float]]) -> None:
        self.frames += 1
        for name, value in values.items():
            self.totals[name].add(value)

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this result exactly (:meth:`from_json`); sums kept as they are."""
        totals = {name: [total.root_mean_square, total.total, total.count, total.skipped]
                  for name, total in self.totals.items()}
        return {"name": self.name, "totals": totals, "frames": self.frames, "group": self.group,
                "notes": self.notes, "columns": self.columns}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ItemResult":
        totals = {name: MetricTotal(bool(rms), float(total), int(count), int(skipped))
                  for name, (rms, total, count, skipped) in data["totals"].items()}
        return cls(data["name"], totals, int(data["frames"]), data["group"], list(data["notes"]),
                   dict(data["columns"]))


@dataclass
class EvaluationReport:
    """Everything one evaluation produced; :meth:`summary` (JSON), :meth:`write_csv`, :meth:`table`."""

    protocol: str
    metrics: list[str]
    backends: dict[str, str]
    items: list[ItemResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(item.group for item in self.items)) or [ALL_GROUP]

    def pooled(self, group: Optional[str] = None) -> dict[str, MetricTotal]:
        """Per-metric totals over all frames of all items (of one group)."""
        totals = {name: MetricTotal(METRICS[name].root_mean_square) for name in self.metrics}
        for item in self.items:
            if group is None or item.group == group:
                for name, total in item.totals.items():
                    totals[name].merge(total)
        return {name: total for name, total in totals.items() if total.count or total.skipped}

    def _block(self, group: Optional[str] = None) -> dict[str, Any]:
        items = [item for item in self.items if group is None or item.group == group]
        metrics = {name: {"mean": _json_number(total.value), "frames": total.count, "skipped_frames": total.skipped,
                          "backend": self.backends[name], "higher_is_better": METRICS[name].higher_is_better,
                          "unit": METRICS[name].unit, "definition": METRICS[name].description}
                   for name, total in self.pooled(group).items()}
        return {"items": len(items), "frames": sum(item.frames for item in items), "metrics": metrics}

    def summary(self) -> dict[str, Any]:
        """The JSON summary: pooled means and counts per metric (and per group for the pairs protocol)."""
        summary = {"protocol": self.protocol, **self._block()}
        if self.groups() != [ALL_GROUP]:
            summary["groups"] = {group: self._block(group) for group in self.groups()}
        summary.update({"metric_backends": self.backends, "settings": self.settings,
                        "notes": self.notes + self._standard_notes()})
        return summary

    def _standard_notes(self) -> list[str]:
        notes = []
        if {"aed", "csim"} & set(self.metrics):
            notes.append(IDENTITY_NOTE)
        if "psnr" in self.metrics:
            notes.append("psnr is inf for identical frames (no cap); a mean over such frames is inf")
        if set(FACE_METRICS) & set(self.metrics):
            notes.append("face metrics skip frames where either image has no detected face (skipped_frames)")
        return notes

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.summary(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path: str | os.PathLike) -> None:
        """One row per item: name, [group], frames, each metric, skipped counts of face metrics, extras, notes."""
        face = [name for name in self.metrics if name in FACE_METRICS]
        extras = list(dict.fromkeys(key for item in self.items for key in item.columns))
        grouped = self.groups() != [ALL_GROUP]
        header = ["name"] + (["group"] if grouped else []) + ["frames"] + self.metrics
        header += [f"{name}_skipped" for name in face] + extras + ["notes"]
        rows = []
        for item in self.items:
            row = [item.name] + ([item.group] if grouped else []) + [str(item.frames)]
            row += [_csv_number(item.totals[name].value) if name in item.totals else "" for name in self.metrics]
            row += [str(item.totals[name].skipped) if name in item.totals else "" for name in face]
            row += [item.columns.get(key, "") for key in extras] + ["; ".join(item.notes)]
            rows.append(row)
        atomic_write_text(path, _csv_text([header] + rows))

    def table(self) -> str:
        """A plain-text table of the pooled means with each metric's backend, and the notes."""
        lines = [f"protocol: {self.protocol}; {len(self.items)} item(s), {sum(i.frames for i in self.items)} frame(s)"]
        for group in self.groups():
            if group != ALL_GROUP:
                lines.append(f"[{group}]")
            rows = [["metric", "mean", "frames", "skipped", "backend"]]
            for name, total in self.pooled(None if group == ALL_GROUP else group).items():
                value = "n/a" if total.value is None else f"{total.value:.4f} {METRICS[name].unit}".strip()
                rows.append([name, value, str(total.count), str(total.skipped), self.backends[name]])
            widths = [max(len(row[column]) for row in rows) for column in range(4)]
            lines += ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
                      for row in rows]
        lines += [f"note: {note}" for note in self.notes + self._standard_notes()]
        return "\n".join(lines)


def _json_number(value: Optional[float]) -> Any:
    """JSON has no inf/nan: they are written as the strings "inf", "-inf", "nan"."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else (f"{value:.6g}" if math.isfinite(value) else str(value))


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()




# Scoring a sequence of frame pairs.

def score_stream(scorer: FrameScorer, result: ItemResult, pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                 total: Optional[int] = None, progress: bool = True,
                 metrics: Optional[Sequence[str]] = None) -> ItemResult:
    """Score ``(generated, reference)`` frame pairs in order into ``result`` (with a progress bar)."""
    bar = tqdm(pairs, total=total, desc=result.name[:30], unit="frame", leave=False, disable=not progress,
               dynamic_ncols=True)
    for generated, reference in bar:
        result.add(scorer.score(generated, reference, metrics))
    return result


def fit_frame(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` uint8 resized to ``shape`` (anti-aliased, as the model's inputs are); unchanged if it fits."""
    if frame.shape[:2] == tuple(shape):
        return frame
    return to_uint8(skimage.transform.resize(frame, shape, anti_aliasing=True))
