"""Publishing a trained model: copy its checkpoint into the models folder (optionally with float16
weights), write its model card (``<id>.md``: architecture, data, commands, metrics from an
``lnassist evaluate`` report, sha256) and register it in ``registry.json``.

Kept apart from :mod:`lnassist.registry`, which the Docker image and the Girder server import at run
time: publishing reads checkpoints through the detector's and classifier's loaders and reports
through the evaluation code, none of which run-time lookup needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lnassist.fileio import load_torch, save_torch, write_text_atomic
from lnassist.registry import ModelEntry, RegistryError, models_dir, register, sha256_of


def checkpoint_facts(kind: str, path: Path) -> dict[str, Any]:
    """Architecture facts for the card, read through the kind's own loader (which validates the file)."""
    if kind == "detector":
        from lnassist.detector.model import load_checkpoint

        model, metadata = load_checkpoint(path)
        cfg = model.config
        return {
            "architecture": f"DeepLabv3+ (segmentation-models-pytorch), encoder {cfg.encoder}",
            "input": f"RGB at {cfg.mpp} um/px (1.25x)",
            "metadata": metadata,
        }
    from lnassist.classifier import load_classifier

    clf = load_classifier(path)
    spec = clf.spec
    arch = f"ESCNN: {spec.backbone} trunk, frozen batch norm, global max pooling, linear head (2 classes)"
    if spec.method == "mil":
        arch = (
            f"MIL patch baseline: {spec.backbone} on {spec.patch_px} px patches, LN score = max patch score"
        )
    if spec.orientations > 1:
        arch += f"; scored in {spec.orientations} orientations (quarter turns, flips), logits averaged"
    return {
        "architecture": arch,
        "input": f"whole LN image at {spec.mpp} um/px, white outside the contour",
        "metadata": clf.metadata,
    }


def with_half_weights(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint payload (detector or classifier) with its floating-point weights in float16.

    Halves the file; loading copies the values back into float32 parameters."""
    state = payload["state_dict"]
    return {**payload, "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}}


def _with_orientations(kind: str, payload: dict[str, Any], orientations: int) -> dict[str, Any]:
    if kind != "classifier":
        raise RegistryError("orientations are a classifier setting; a detector has none")
    from lnassist.classifier import ClassifierError, ClassifierSpec, spec_payload

    try:
        spec = ClassifierSpec.from_dict({**payload["spec"], "orientations": orientations})
    except ClassifierError as exc:
        raise RegistryError(str(exc)) from exc
    return {**payload, "spec": spec_payload(spec)}


def publish(
    kind: str,
    checkpoint: str | Path,
    model_id: str,
    version: str,
    *,
    report: dict[str, Any] | None = None,
    train_command: str = "",
    data_command: str = "",
    evaluate_command: str = "",
    notes: str = "",
    half: bool = False,
    folder: str | Path | None = None,
    make_default: bool = True,
    orientations: int | None = None,
) -> ModelEntry:
    """Copy a trained checkpoint into the models folder (optionally with float16 weights), write its
    model card (``<id>.md``) and register it. ``orientations`` (classifiers) sets how many orientations
    of an LN the published model scores (:class:`lnassist.classifier.ClassifierSpec`)."""
    folder = Path(folder) if folder is not None else models_dir()
    checkpoint_facts(kind, Path(checkpoint))  # refuse a file that is not a checkpoint of its kind first
    payload = load_torch(checkpoint, f"{kind} checkpoint", RegistryError)
    if half:
        payload = with_half_weights(payload)
    if orientations is not None:
        payload = _with_orientations(kind, payload, orientations)
    target = folder / f"{model_id}.pt"
    save_torch(target, payload, overwrite=True)
    facts = checkpoint_facts(kind, target)  # the shipped file itself must load
    digest = sha256_of(target)
    summary: dict[str, Any] = {}
    if report is not None and kind == "detector" and "models" not in report and "summary" in report:
        report = {"detector": report}  # an ``evaluate-detector`` report: the detector alone
    if report is not None:
        from lnassist.evaluate import headline

        summary = {k: v for k, v in headline(report).items() if k == "detector" or kind == "classifier"}
    card = _card(
        kind,
        model_id,
        version,
        facts,
        digest,
        target.stat().st_size,
        half,
        summary,
        report,
        train_command,
        data_command,
        evaluate_command,
        notes,
    )
    write_text_atomic(folder / f"{model_id}.md", card, overwrite=True)
    entry = ModelEntry(model_id, kind, target.name, digest, version, f"{model_id}.md", summary)
    register(entry, folder, make_default)
    return entry


def card_file_lines(
    kind: str, facts: dict[str, Any], file_name: str, digest: str, size: int, half: bool
) -> list[str]:
    """The card's bullet list of what the file is: kind, architecture (``facts`` from
    :func:`checkpoint_facts`), input, file size, sha256 and how it is loaded."""
    return [
        f"- Kind: {kind}",
        f"- Architecture: {facts['architecture']}",
        f"- Input: {facts['input']}",
        f"- File: `{file_name}`, {size / 1e6:.2f} MB" + (" (float16 weights, run in float32)" * half),
        f"- sha256: `{digest}`",
        "- Loading: `torch.load(..., weights_only=True)` through lnassist (registry checks the sha256)",
    ]


def _card(
    kind: str,
    model_id: str,
    version: str,
    facts: dict[str, Any],
    digest: str,
    size: int,
    half: bool,
    summary: dict[str, Any],
    report: dict[str, Any] | None,
    train_command: str,
    data_command: str,
    evaluate_command: str,
    notes: str,
) -> str:
    training = facts["metadata"].get("training", facts["metadata"])
    lines = [
        f"# Model card: {model_id} (version {version})",
        "",
        *card_file_lines(kind, facts, f"{model_id}.pt", digest, size, half),
        "",
        "## Training data",
        "",
        "Synthetic H&E lymph-node slides from `lnassist synth-dataset` (no patient data). Command:",
        "",
        f"    {data_command}",
        "",
        "## Training",
        "",
        f"    {train_command}",
        "",
        "```json",
        json.dumps(training, indent=1, default=str)[:4000],
        "```",
        "",
        "## Held-out synthetic test set",
        "",
    ]
    if evaluate_command:
        lines += ["Reproduce with:", "", f"    {evaluate_command}", ""]
    for name, values in summary.items():
        lines.append(
            f"- {name}: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        )
    if report is not None and kind == "classifier":
        lines += ["", "| model | set | n+ / n- | AUC (95% CI) |", "|---|---|---|---|"]
        for name, model in report.get("models", {}).items():
            m = model["metrics"]
            for set_name, block in (
                ("LN", m["ln"]["all"]),
                ("micro", m["ln"]["micro"]),
                ("ITC", m["ln"]["itc"]),
                ("slide", m["slide"]["all"]),
            ):
                if "auc" in block:
                    auc = block["auc"]
                    lines.append(
                        f"| {name} | {set_name} | {block['n_positive']} / {block['n_negative']} | "
                        f"{auc['auc']:.4f} ({auc['ci_low']:.4f}-{auc['ci_high']:.4f}) |"
                    )
    lines += [
        "",
        "## Limitations",
        "",
        "Trained and tested on synthetic slides only: the numbers say the method and code work on a "
        "learnable problem with ITCs, mimics and stain variation, not how the model performs on patients' "
        "slides. Not for clinical use without validation on real data.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes, ""]
    return "\n".join(lines)
