"""``lnassist collect``: a Girder folder's reviewed LN annotations -> a frozen dataset directory
(:mod:`lnassist.collect`), optionally uploaded to a Datasets folder. Credentials come from the
environment (``GIRDER_API_KEY`` or ``GIRDER_TOKEN``), never from the command line."""

from __future__ import annotations

import argparse
from typing import Any


def run_collect(args: argparse.Namespace) -> int:
    from lnassist import collect

    client = collect.connect(args.api_url)
    snapshot = collect.collect(
        client,
        args.folder,
        args.out,
        include_unreviewed=args.include_unreviewed,
        api_url=args.api_url,
        progress=None if args.quiet else print,
    )
    counts, fetch = snapshot["counts"], snapshot["fetch"]
    print(
        f"snapshot {snapshot['id']}: {counts['lns']} LNs ({counts['positive']} positive) of "
        f"{counts['slides']} slides, {len(snapshot['skipped'])} slide(s) left out; regions fetched "
        f"{fetch['regions_fetched']}, reused {fetch['regions_reused']} "
        f"({fetch['bytes_fetched'] / 1e6:.1f} MB in {fetch['seconds']:.1f} s) -> {args.out}"
    )
    if args.upload:
        item = collect.upload(client, args.out, args.upload)
        print(f"uploaded as item {item['_id']} ({item['name']}) of folder {args.upload}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collect",
        help="reviewed LN annotations of a Girder folder -> a frozen training dataset (manifest + snapshot)",
        description="Collect every slide under --folder (recursive) whose lnassist LN result a pathologist "
        "reviewed as accepted or corrected: one manifest row per LN (reviewed label, contour, provenance), "
        "its region fetched through the tile API at the classifier's resolution, and snapshot.json "
        "(annotation ids and versions, region checksums, the AI-vs-reviewed transition matrix). A re-run "
        "into the same --out fetches only missing regions. Credentials: $GIRDER_API_KEY or $GIRDER_TOKEN.",
    )
    p.add_argument("--api-url", required=True, help="Girder API URL, e.g. http://dsa:8080/api/v1")
    p.add_argument("--folder", required=True, help="Girder folder id")
    p.add_argument("--out", required=True, help="dataset directory (created; reused by a re-run)")
    p.add_argument(
        "--include-unreviewed",
        action="store_true",
        help="also collect AI results nobody reviewed (recorded in the snapshot)",
    )
    p.add_argument("--upload", metavar="FOLDER_ID", help="also upload the dataset into this Girder folder")
    p.add_argument("--quiet", action="store_true", help="no line per fetched region")
    p.set_defaults(func=run_collect)
