"""Shipped models: the registry file (``models/registry.json``), checksums and lookup by id or kind.

The registry lists every model file in the models folder with its kind (``detector`` or
``classifier``), sha256, version and model card, and names the default model of each kind. The
pipeline asks :func:`resolve` for a model; the file's sha256 is checked before it is loaded, so a
corrupt or swapped file is a clear error instead of wrong results. The models folder is
``$LNASSIST_MODELS`` if set, else ``models/`` beside the package (a source checkout).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lnassist.errors import LnassistError
from lnassist.fileio import write_text_atomic

REGISTRY_NAME = "registry.json"
REGISTRY_FORMAT = "lnassist-model-registry/1"
KINDS = ("detector", "classifier")


class RegistryError(LnassistError):
    """Missing, unreadable or inconsistent registry, or a model file that fails its checksum."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: str
    file: str  # relative to the models folder
    sha256: str
    version: str
    card: str = ""  # model card file, relative to the models folder
    summary: dict[str, Any] = field(default_factory=dict)  # headline metrics from the card


def models_dir() -> Path:
    env = os.environ.get("LNASSIST_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Registry:
    folder: Path
    defaults: dict[str, str]
    models: list[ModelEntry]

    def entry(self, kind: str, model_id: str | None = None) -> ModelEntry:
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")
        wanted = model_id or self.defaults.get(kind)
        if not wanted:
            raise RegistryError(f"{self.folder / REGISTRY_NAME} names no default {kind}")
        for e in self.models:
            if e.id == wanted:
                if e.kind != kind:
                    raise RegistryError(f"model {wanted!r} is a {e.kind}, not a {kind}")
                return e
        known = ", ".join(e.id for e in self.models if e.kind == kind) or "none"
        raise RegistryError(f"no {kind} {wanted!r} in {self.folder / REGISTRY_NAME} (known: {known})")

    def to_json(self) -> str:
        data = {
            "format": REGISTRY_FORMAT,
            "defaults": self.defaults,
            "models": [asdict(e) for e in self.models],
        }
        return json.dumps(data, indent=1) + "\n"


def load_registry(folder: str | Path | None = None) -> Registry:
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / REGISTRY_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(
            f"no model registry at {path} (set LNASSIST_MODELS to the models folder)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise RegistryError(f"{path} is not a {REGISTRY_FORMAT} file")
    try:
        models = [ModelEntry(**m) for m in data.get("models", [])]
    except TypeError as exc:
        raise RegistryError(f"{path}: bad model entry ({exc})") from exc
    return Registry(folder, dict(data.get("defaults", {})), models)


def resolve(kind: str, model: str | None = None, folder: str | Path | None = None) -> tuple[Path, ModelEntry]:
    """The verified file of a model: ``model`` is a registry id, a path to a checkpoint, or None for
    the registry's default of ``kind``. Registry files must match their sha256."""
    if model is not None and (model.endswith(".pt") or os.sep in model) and Path(model).exists():
        path = Path(model)
        return path, ModelEntry(
            id=path.stem, kind=kind, file=str(path), sha256=sha256_of(path), version="local"
        )
    registry = load_registry(folder)
    entry = registry.entry(kind, model)
    path = registry.folder / entry.file
    if not path.is_file():
        raise RegistryError(f"model file {path} of {entry.id!r} is missing")
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise RegistryError(
            f"model file {path} is corrupt or was replaced: sha256 {actual[:12]}... but the registry "
            f"says {entry.sha256[:12]}..."
        )
    return path, entry


def register(entry: ModelEntry, folder: str | Path | None = None, make_default: bool = True) -> Registry:
    """Add or replace ``entry`` (its file already in the folder) and write the registry atomically."""
    folder = Path(folder) if folder is not None else models_dir()
    try:
        registry = load_registry(folder)
    except RegistryError:
        if (folder / REGISTRY_NAME).exists():
            raise
        registry = Registry(folder, {}, [])
    if sha256_of(folder / entry.file) != entry.sha256:
        raise RegistryError(f"{folder / entry.file} does not match the sha256 given for {entry.id!r}")
    registry.models = [e for e in registry.models if e.id != entry.id] + [entry]
    if make_default:
        registry.defaults[entry.kind] = entry.id
    write_text_atomic(folder / REGISTRY_NAME, registry.to_json(), overwrite=True)
    return registry


# ----------------------------------------------------------------------------------- publishing


def _checkpoint_facts(kind: str, path: Path) -> dict[str, Any]:
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
    return {
        "architecture": arch,
        "input": f"whole LN image at {spec.mpp} um/px, white outside the contour",
        "metadata": clf.metadata,
    }


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
) -> ModelEntry:
    """Copy a trained checkpoint into the models folder (optionally with float16 weights), write its
    model card (``<id>.md``) and register it."""
    from lnassist.fileio import load_torch, save_torch

    folder = Path(folder) if folder is not None else models_dir()
    facts = _checkpoint_facts(kind, Path(checkpoint))
    payload = load_torch(checkpoint, f"{kind} checkpoint", RegistryError)
    if half:
        # Halves the file; loading copies the values back into float32 parameters.
        payload["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
        }
    target = folder / f"{model_id}.pt"
    save_torch(target, payload, overwrite=True)
    _checkpoint_facts(kind, target)  # the shipped file itself must load
    digest = sha256_of(target)
    summary: dict[str, Any] = {}
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
        f"- Kind: {kind}",
        f"- Architecture: {facts['architecture']}",
        f"- Input: {facts['input']}",
        f"- File: `{model_id}.pt`, {size / 1e6:.2f} MB" + (" (float16 weights, run in float32)" * half),
        f"- sha256: `{digest}`",
        "- Loading: `torch.load(..., weights_only=True)` through lnassist (registry checks the sha256)",
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


def run_publish(args: Any) -> int:
    report = None
    if args.report:
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read evaluation report {args.report}: {exc}") from exc
    entry = publish(
        args.kind,
        args.checkpoint,
        args.id,
        args.version,
        report=report,
        train_command=args.train_command,
        data_command=args.data_command,
        evaluate_command=args.evaluate_command,
        notes=args.notes,
        half=args.half,
        folder=args.models_dir,
        make_default=not args.not_default,
    )
    print(json.dumps(asdict(entry), indent=1))
    return 0


def run_list(args: Any) -> int:
    registry = load_registry(args.models_dir)
    for e in registry.models:
        default = " (default)" if registry.defaults.get(e.kind) == e.id else ""
        print(f"{e.kind:10s} {e.id:28s} v{e.version} {e.sha256[:12]} {e.file}{default}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered models",
        description="List the models of the registry ($LNASSIST_MODELS or models/).",
    )
    p.add_argument("--models-dir", help="models folder (default: $LNASSIST_MODELS or models/)")
    p.set_defaults(func=run_list)
    p = subparsers.add_parser(
        "publish-model",
        help="copy a trained model into models/, write its card, register it",
        description="Copy a trained checkpoint into the models folder, write its model card "
        "(architecture, data, commands, metrics from an evaluate report, sha256) and register it.",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("checkpoint")
    p.add_argument("--id", required=True, help="model id, e.g. classifier-cpu-v1")
    p.add_argument("--version", default="1")
    p.add_argument("--report", help="report.json of lnassist evaluate on the held-out test split")
    p.add_argument("--train-command", default="", help="command that trained it (for the card)")
    p.add_argument("--data-command", default="", help="command that made the training data (for the card)")
    p.add_argument("--evaluate-command", default="", help="command that reproduces the card's numbers")
    p.add_argument("--notes", default="", help="extra text for the card")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument("--not-default", action="store_true", help="register without making it the default")
    p.add_argument("--models-dir", help="models folder (default: $LNASSIST_MODELS or models/)")
    p.set_defaults(func=run_publish)
