"""Slicer CLI "Retrain the LN classifier": reviewed LN annotations -> a candidate model version.

Collects a folder's reviewed LNs into a snapshot (:mod:`lnassist.collect`) or downloads an existing
one, fine-tunes and evaluates with :func:`lnassist.retrain.retrain`, then uploads the snapshot and
the candidate (:mod:`lnassist.versions`). Nothing is uploaded before training and evaluation have
finished, so a cancelled job leaves nothing behind. Parameters: ``LNRetrain.xml``.
"""

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from lnassist.cli_support import CliInputError, SlicerProgress, job_client, local_model, run_cli

STAGES = (
    ("data", "collecting the reviewed LNs", 0.15),
    ("train", "fine-tuning and evaluating", 0.8),
    ("upload", "uploading the snapshot and the candidate", 0.05),
)


def main(args: argparse.Namespace, cli_name: str) -> None:
    from lnassist import collect, versions
    from lnassist.devices import resolve_device
    from lnassist.registry import resolve
    from lnassist.retrain import retrain

    if bool(args.collectFolder) == bool(args.dataset):
        raise CliInputError(
            "give either --collectFolder (make a new snapshot) or --dataset (an existing one)"
        )
    if not args.modelsFolder:
        raise CliInputError("--modelsFolder is needed: the Girder folder the candidate goes into")
    progress = SlicerProgress(STAGES)
    client = job_client(args)
    work = Path(tempfile.mkdtemp(prefix="lnretrain-"))
    data_dir = work / "dataset"
    if args.collectFolder:
        progress("data", 0.0, f"collecting the reviewed LNs of folder {args.collectFolder}")
        snapshot = collect.collect(
            client,
            args.collectFolder,
            data_dir,
            include_unreviewed=args.includeUnreviewed,
            api_url=args.girderApiUrl,
            progress=lambda message: progress("data", 0.5, message),
        )
    else:
        progress("data", 0.0, f"downloading dataset snapshot {args.dataset}")
        snapshot = collect.download(client, args.dataset, data_dir)
    counts = snapshot["counts"]
    progress("data", 1.0, f"snapshot {snapshot['id']}: {counts['lns']} LNs of {counts['slides']} slides")

    parent_path, parent = resolve("classifier", local_model(args, args.parentModel or None))
    tolerance = {
        key: value
        for key, value in (("auc", args.toleranceAuc), ("sensitivity", args.toleranceSensitivity))
        if value >= 0
    }

    def epoch_done(epoch: int, epochs: int, info: dict) -> None:
        progress("train", epoch / epochs, f"epoch {epoch}/{epochs} done: {info}")

    progress("train", 0.0, f"fine-tuning {parent.id} ({parent.version})")
    record = retrain(
        data_dir,
        parent_path,
        work / "out",
        parent_ref={"id": parent.id, "version": parent.version, "sha256": parent.sha256},
        dataset_ref={"snapshot_id": snapshot["id"], "item_id": args.dataset or None},
        seed=args.seed,
        heldout_fraction=args.heldoutFraction,
        epochs=args.epochs,
        use_transition=args.useTransition,
        tolerance=tolerance or None,
        device=resolve_device(args.device),
        progress=epoch_done,
    )

    progress("upload", 0.0, "uploading")
    dataset_item_id = args.dataset or None
    if args.collectFolder:
        datasets = collect.datasets_folder(client, args.modelsFolder)
        dataset_item_id = collect.upload(client, data_dir, datasets["_id"])["_id"]
    name = f"classifier-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{snapshot['id'][:8]}"
    item = versions.upload(
        client,
        args.modelsFolder,
        name,
        work / "out" / "candidate.pt",
        work / "out" / "candidate.md",
        work / "out" / "candidate.json",
        {"kind": "classifier", "id": name, "dataset_item_id": dataset_item_id, "record": record},
    )
    held = record["heldout"]
    progress(
        "upload",
        1.0,
        f"candidate {name} (item {item['_id']}): held-out AUC {held['candidate']['auc']} "
        f"vs {held['parent']['auc']} for {parent.id}",
    )
    progress.finish()


if __name__ == "__main__":
    sys.exit(run_cli(__file__, main))
