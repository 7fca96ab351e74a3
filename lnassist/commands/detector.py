"""``lnassist detect`` (slide -> LN contours JSON), ``lnassist train-detector`` (manifest ->
checkpoint) and ``lnassist evaluate-detector`` (checkpoint + manifest split -> JSON report)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from lnassist.commands.args import device, positive_int, set_threads
from lnassist.detector import DetectorError
from lnassist.detector.infer import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX
from lnassist.detector.model import PRESETS
from lnassist.detector.postprocess import MIN_COMPONENT_PX
from lnassist.fileio import atomic_output, refuse_existing, write_text_atomic


def _load_for_inference(args: argparse.Namespace, outputs: tuple[Path | None, ...]) -> tuple[Any, dict]:
    """Threads, an early refusal of existing outputs (before any compute), the checkpoint on the device."""
    from lnassist.detector.model import load_checkpoint

    set_threads(args.threads)
    for out in outputs:
        if out is not None:
            refuse_existing(out, args.overwrite)
    model, metadata = load_checkpoint(args.weights)
    return model.to(args.device), metadata


def _write_json(report: dict[str, Any], out: Path | None, overwrite: bool) -> None:
    text = json.dumps(report, indent=1)
    if out is None:
        print(text)
    else:
        write_text_atomic(out, text + "\n", overwrite=overwrite)
        print(f"wrote {out}")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile-px", type=positive_int, default=DEFAULT_TILE_PX,
                        help="inference tile side at 1.25x (default %(default)s)")
    parser.add_argument("--overlap-px", type=int, default=DEFAULT_OVERLAP_PX,
                        help="overlap of neighbouring tiles at 1.25x (default %(default)s)")
    parser.add_argument("--min-component-px", type=positive_int, default=MIN_COMPONENT_PX,
                        help="smallest LN kept, pixels at 1.25x (paper: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cuda")


def run_detect(args: argparse.Namespace) -> int:
    import cv2

    from lnassist.detector.infer import detect_slide, detection_to_json
    from lnassist.slide import open_slide

    model, _ = _load_for_inference(args, (args.out, args.mask_png))
    slide = open_slide(args.slide, mpp=args.mpp)
    detection = detect_slide(
        slide, model, args.tile_px, args.overlap_px, args.min_component_px, model.config.mpp
    )
    report = detection_to_json(
        detection, slide=str(slide.path), base_mpp=slide.base_mpp, detector_mpp=model.config.mpp,
        weights=str(args.weights),
    )
    if args.mask_png is not None:
        encoded, png = cv2.imencode(".png", detection.cleaned_mask.astype("uint8") * 255)
        if not encoded:
            raise DetectorError(f"{args.mask_png}: could not encode the mask PNG")
        with atomic_output(args.mask_png, overwrite=args.overwrite) as tmp:
            tmp.write_bytes(png.tobytes())
    _write_json(report, args.out, args.overwrite)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from lnassist.detector.train import TRAIN_PRESETS, train_from_manifest

    set_threads(args.threads)
    model_config = PRESETS[args.preset]
    if args.encoder and args.init_weights:
        raise DetectorError("--encoder and --init-weights: the starting weights fix the architecture")
    if args.encoder:
        model_config = replace(model_config, encoder=args.encoder)
    overrides = {
        name: getattr(args, name)
        for name in ("iterations", "batch_size", "crop_px", "lr", "colour_jitter", "blur_px", "ink_p", "seed")
        if getattr(args, name) is not None
    }
    train_config = replace(TRAIN_PRESETS[args.preset], **overrides)
    metadata = train_from_manifest(
        args.manifest, args.out, model_config, train_config,
        evaluate_split=args.evaluate_split or None, overwrite=args.overwrite, device=args.device,
        init_weights=args.init_weights,
    )
    print(json.dumps(metadata, indent=1))
    print(f"wrote {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from lnassist.detector.evaluate import evaluate_manifest

    model, metadata = _load_for_inference(args, (args.out,))
    report = evaluate_manifest(
        args.manifest, model, args.split, model.config.mpp,
        args.tile_px, args.overlap_px, args.min_component_px,
    )
    report = {"weights": str(args.weights), "weights_metadata": metadata, **report}
    _write_json(report, args.out, args.overwrite)
    return 0


def add_cli(subparsers: Any) -> None:
    detect = subparsers.add_parser(
        "detect", help="detect LNs on a slide (DeepLabv3+ at 1.25x) and write their contours as JSON",
        description="Run the LN detector on a whole slide; contours are polygons in base-level pixels.",
    )
    detect.add_argument("slide", type=Path, help="slide file (any format large_image reads)")
    detect.add_argument("--weights", type=Path, required=True, help="detector checkpoint (train-detector)")
    detect.add_argument("--out", type=Path, default=None, help="output JSON (default: print)")
    detect.add_argument("--mask-png", type=Path, default=None, help="also write the cleaned 1.25x mask here")
    detect.add_argument("--mpp", type=float, default=None, help="base-level um/px (slides without metadata)")
    detect.add_argument("--overwrite", action="store_true")
    _add_inference_options(detect)
    detect.set_defaults(func=run_detect)

    train = subparsers.add_parser(
        "train-detector", help="train the LN detector on a data set manifest's train split",
        description="Train DeepLabv3+ at 1.25x from LN contours; evaluate on a held-out split; save weights.",
    )
    train.add_argument("manifest", type=Path, nargs="+",
                       help="manifest.jsonl (synth-dataset or the same format); several are pooled")
    train.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    train.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                       help="cpu: resnet18, 1000 iterations of 4 x 256 px crops; paper: resnet50, 40,000 "
                            "iterations of 8 x 1024 px crops (default %(default)s)")
    train.add_argument("--encoder", default=None, help="override the preset's encoder (e.g. mobilenet_v2)")
    train.add_argument("--init-weights", type=Path, default=None,
                       help="go on training this detector checkpoint (its architecture) instead of a new one")
    train.add_argument("--iterations", type=positive_int, default=None)
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument("--crop-px", type=positive_int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument(
        "--colour-jitter", type=float, default=None, help="per-channel stain gain half-width (cpu: 0.1)"
    )
    train.add_argument(
        "--blur-px",
        type=float,
        default=None,
        help="largest Gaussian blur sigma (1.25x px) drawn per crop; 0 = none (the presets)",
    )
    train.add_argument(
        "--ink-p", type=float, default=None, help="share of crops given pen strokes; 0 = none (presets)"
    )
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--evaluate-split", default="val", help="held-out split to score ('' for none)")
    train.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    train.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cuda")
    train.add_argument("--overwrite", action="store_true")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate-detector", help="score a detector checkpoint on a manifest split (IoU, accuracy, counts)",
    )
    evaluate.add_argument("manifest", type=Path)
    evaluate.add_argument("--weights", type=Path, required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--out", type=Path, default=None, help="output JSON (default: print)")
    evaluate.add_argument("--overwrite", action="store_true")
    _add_inference_options(evaluate)
    evaluate.set_defaults(func=run_evaluate)
