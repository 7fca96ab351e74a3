"""Scoring models on a manifest split and writing the paper-style report (``lnassist evaluate``).

One command gives, for every classifier named (``NAME=checkpoint``) or every score table given
(``NAME=scores.csv``): per-LN scores on the split's LN contours (``scores-NAME.csv``), the
statistics of :func:`lnassist.metrics.evaluate` (LN, micrometastasis and ITC subsets, slide
level), DeLong tests between every pair of models, and ROC curves as PNGs; optionally the LN
detector's IoU / pixel accuracy / count error on the same slides. ``report.json`` holds it all.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.errors import LnassistError
from lnassist.fileio import atomic_output, refuse_existing, write_text_atomic
from lnassist.metrics import N_BOOT, SUBSETS, delong_test, evaluate, plot_roc, slide_level, subset_mask

log = logging.getLogger(__name__)

SCORE_FIELDS = ("key", "slide_id", "category", "label", "score")
REPORT_NAME = "report.json"


class EvaluateError(LnassistError):
    """Bad model/score arguments or inconsistent score tables."""


def score_split(
    classifier: Any, manifest: str | Path, split: str, progress: bool = False
) -> list[dict[str, Any]]:
    """One record per LN of ``split`` (its ground-truth contour), scored by ``classifier``."""
    from tqdm import tqdm

    from lnassist.classifier import score_source
    from lnassist.escnn.streaming import StreamingConfig
    from lnassist.training.data import images_from_manifest, open_image

    images = images_from_manifest(manifest, split, "ln")
    streaming = StreamingConfig(
        tile_px=classifier.metadata.get("training", {}).get("config", {}).get("tile_px")
    )
    records = []
    for image in tqdm(images, desc=f"scoring {split}", disable=not progress, mininterval=2):
        scored = score_source(classifier, open_image(image, classifier.spec.mpp), streaming)
        records.append(
            {
                "key": image.key,
                "slide_id": image.slide_id,
                "category": image.category,
                "label": image.label,
                "score": scored.score,
            }
        )
    return records


def records_to_csv(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SCORE_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({**r, "score": repr(float(r["score"]))})
    return buf.getvalue()


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise EvaluateError(f"cannot read scores {path}: {exc}") from exc
    if not rows or set(SCORE_FIELDS) - set(rows[0]):
        raise EvaluateError(f"{path}: a score table needs the columns {', '.join(SCORE_FIELDS)}")
    return [{**r, "label": int(float(r["label"])), "score": float(r["score"])} for r in rows]


def _curves(by_model: dict[str, list[dict[str, Any]]], subset: str | None, slide: bool = False) -> dict:
    curves = {}
    for name, recs in by_model.items():
        labels = np.array([r["label"] for r in recs])
        scores = np.array([r["score"] for r in recs])
        if slide:
            _, labels, scores = slide_level([r["slide_id"] for r in recs], labels, scores)
        elif subset is not None:
            mask = subset_mask([r["category"] for r in recs], subset)
            labels, scores = labels[mask], scores[mask]
        if labels.sum() >= 2 and (~labels.astype(bool)).sum() >= 2:
            curves[name] = (labels, scores)
    return curves


def compare(by_model: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """DeLong's test for every pair of models on the same LNs (all, subsets, slide level)."""
    out = []
    for (a, ra), (b, rb) in itertools.combinations(by_model.items(), 2):
        if [r["key"] for r in ra] != [r["key"] for r in rb]:
            raise EvaluateError(f"models {a!r} and {b!r} were not scored on the same LNs in the same order")
        entry: dict[str, Any] = {"a": a, "b": b}
        for name, curves in (
            ("ln", _curves({a: ra, b: rb}, None)),
            *((s, _curves({a: ra, b: rb}, s)) for s in SUBSETS),
            ("slide", _curves({a: ra, b: rb}, None, True)),
        ):
            if len(curves) == 2:
                (y, sa), (_, sb) = curves[a], curves[b]
                t = delong_test(y, sa, sb)
                entry[name] = {
                    "auc_a": t.auc_a,
                    "auc_b": t.auc_b,
                    "difference": t.auc_a - t.auc_b,
                    "z": t.z,
                    "p_value": t.p_value,
                }
        out.append(entry)
    return out


def write_report(
    manifest: str | Path,
    split: str,
    out: str | Path,
    classifiers: Mapping[str, str | Path],
    score_files: Mapping[str, str | Path],
    detector: str | Path | None = None,
    *,
    device: str = "cpu",
    n_boot: int = N_BOOT,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score ``split`` with each classifier (name -> checkpoint) or read its score table (name -> CSV),
    evaluate the detector too if given, and write ``scores-NAME.csv``, ``roc-*.png`` and
    ``report.json`` into ``out``; returns the report."""
    from lnassist.classifier import load_classifier

    out = Path(out)
    refuse_existing(out / REPORT_NAME, overwrite)
    if not classifiers and not score_files and not detector:
        raise EvaluateError("nothing to evaluate: give --classifier, --scores and/or --detector")
    if set(classifiers) & set(score_files):
        raise EvaluateError(f"model names used twice: {sorted(set(classifiers) & set(score_files))}")
    report: dict[str, Any] = {"manifest": str(manifest), "split": split, "models": {}}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for name, path in classifiers.items():
        classifier = load_classifier(path, device)
        t0 = time.perf_counter()
        by_model[name] = score_split(classifier, manifest, split, progress=progress)
        report["models"][name] = {
            "checkpoint": str(path),
            "spec": asdict(classifier.spec),
            "scoring_seconds": round(time.perf_counter() - t0, 1),
        }
    for name, path in score_files.items():
        by_model[name] = read_scores(path)
        report["models"][name] = {"scores": str(path)}
    # Every statistic before any file: a split the statistics refuse leaves no output behind.
    for name, recs in by_model.items():
        report["models"][name]["metrics"] = evaluate(recs, n_boot=n_boot)
    if len(by_model) > 1:
        report["comparisons"] = compare(by_model)
    if detector:
        from lnassist.detector.evaluate import evaluate_manifest
        from lnassist.detector.model import load_checkpoint

        model, _ = load_checkpoint(detector)
        model.to(device)
        report["detector"] = {
            "checkpoint": str(detector),
            **evaluate_manifest(manifest, model, split, model.config.mpp),
        }
    for name in classifiers:
        write_text_atomic(out / f"scores-{name}.csv", records_to_csv(by_model[name]), overwrite=overwrite)
    report["roc_png"] = {}
    for tag, curves in (
        ("ln", _curves(by_model, None)),
        *((s, _curves(by_model, s)) for s in SUBSETS),
        ("slide", _curves(by_model, None, slide=True)),
    ):
        if curves:
            title = {"ln": "LN level", "slide": "slide level"}.get(tag, f"{tag} subset (all negatives)")
            png = out / f"roc-{tag}.png"
            with atomic_output(png, overwrite=overwrite) as tmp:
                plot_roc(curves, tmp, title=title)
            report["roc_png"][tag] = str(png)
    write_text_atomic(out / REPORT_NAME, json.dumps(report, indent=1) + "\n", overwrite=overwrite)
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a model card quotes, from a report."""
    out: dict[str, Any] = {}
    for name, model in report.get("models", {}).items():
        m = model["metrics"]
        out[name] = {
            "ln_auc": m["ln"]["all"]["auc"]["auc"],
            "itc_auc": m["ln"]["itc"].get("auc", {}).get("auc"),
            "micro_auc": m["ln"]["micro"].get("auc", {}).get("auc"),
            "slide_auc": m["slide"]["all"].get("auc", {}).get("auc"),
        }
    if "detector" in report:
        det = report["detector"]["summary"]
        keys = (
            "postprocessed_iou_pooled",
            "outlined_iou_pooled",
            "postprocessed_pixel_accuracy",
            "count_error_mean_abs",
        )
        out["detector"] = {k: det[k] for k in keys if k in det}  # reports before "outlined" lack it
    return out


def summary_text(report: dict[str, Any]) -> str:
    lines = []
    for name, values in headline(report).items():
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
        lines.append(f"{name}: " + ", ".join(parts))
    return "\n".join(lines)
