"""Train/val/test sets of synthetic slides with a per-LN manifest (``manifest.jsonl``) for training code.

Each split has its own slide count, stain sites, category mix and tumour-type mix (the default test
mix is rich in micrometastases and ITCs so they can be measured separately, as in the paper). A
fourth split, ``unseen``, holds slides from stain sites and scanners no training or validation slide
uses (``UNSEEN_SITES``), to measure how a model generalises to a new lab. ``plan_dataset`` gives a
configuration's composition from the layouts alone (seconds, no pixels); ``build_dataset`` records
the same composition in ``dataset.json``. The manifest
(:mod:`lnassist.manifest`) gets, per LN, the required fields plus the ground-truth path, category,
largest deposit extent, bbox, stain site, mpp, slide label and slide seed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lnassist.categories import CATEGORIES, ITC, MACRO, MICRO, NEGATIVE, NEGATIVE_MIMIC
from lnassist.fileio import refuse_existing, write_text_atomic
from lnassist.manifest import MANIFEST_NAME, write_manifest
from lnassist.synth import SynthError
from lnassist.synth.generate import ground_truth, gt_path_for, write_slide
from lnassist.synth.layout import DEFAULT_LOOK, DEFAULT_MIX, LOOKS, TUMOUR_TYPES, LayoutConfig, build_layout
from lnassist.synth.stain import get_site

log = logging.getLogger(__name__)

TEST_MIX = {NEGATIVE: 0.3, NEGATIVE_MIMIC: 0.15, ITC: 0.25, MICRO: 0.2, MACRO: 0.1}
TUMOUR_MIX = {"intestinal": 0.45, "diffuse": 0.35, "mixed": 0.2}
UNSEEN_SITES = ("E", "F")  # stains and scanners kept out of training: the unseen-site split's
SPLITS = ("train", "val", "test", "unseen")


@dataclass(frozen=True)
class SplitConfig:
    n_slides: int
    sites: tuple[str, ...] = ("A", "B")
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    tumour_mix: dict[str, float] = field(default_factory=lambda: dict(TUMOUR_MIX))


@dataclass(frozen=True)
class DatasetConfig:
    seed: int = 0
    width_px: int = 12000
    height_px: int = 12000
    tile_px: int = 512
    quality: int | None = None  # JPEG; None: 85, or each slide's scanner for the "scanned" look
    look: str = DEFAULT_LOOK
    smallest_node_um: float | None = None  # see LayoutConfig
    train: SplitConfig = SplitConfig(24)
    val: SplitConfig = SplitConfig(6)
    test: SplitConfig = SplitConfig(12, ("A", "B", "C"), dict(TEST_MIX))
    unseen: SplitConfig = SplitConfig(0, UNSEEN_SITES, dict(TEST_MIX))

    def splits(self) -> dict[str, SplitConfig]:
        return {name: getattr(self, name) for name in SPLITS}

    def validate(self) -> None:
        if self.seed < 0:
            raise SynthError(f"seed must be >= 0, got {self.seed}")
        if self.look not in LOOKS:
            raise SynthError(f"look must be one of {LOOKS}, got {self.look!r}")
        for name, s in self.splits().items():
            if s.n_slides < 0:
                raise SynthError(f"{name}: number of slides must be >= 0, got {s.n_slides}")
            if not s.sites:
                raise SynthError(f"{name}: needs at least one stain site")
            for site in s.sites:
                get_site(site)
            bad = set(s.mix) - set(CATEGORIES)
            if bad or any(v < 0 for v in s.mix.values()) or sum(s.mix.values()) <= 0:
                raise SynthError(f"{name}: bad category mix {s.mix}; weights >= 0 over {CATEGORIES}")
            tm = s.tumour_mix
            if set(tm) - set(TUMOUR_TYPES) or any(v < 0 for v in tm.values()) or sum(tm.values()) <= 0:
                raise SynthError(f"{name}: bad tumour-type mix {tm}; weights >= 0 over {TUMOUR_TYPES}")
        if sum(s.n_slides for s in self.splits().values()) == 0:
            raise SynthError("the data set would have no slides")
        if self.unseen.n_slides:
            seen = {site for sc in (self.train, self.val) if sc.n_slides for site in sc.sites}
            shared = sorted(seen & set(self.unseen.sites))
            if shared:
                raise SynthError(f"unseen split uses sites {shared} that train/val slides use too")


def load_config(path: str | Path, **overrides) -> DatasetConfig:
    """DatasetConfig from YAML (top-level keys as the dataclass; splits as mappings), then overrides."""
    from lnassist.fileio import read_yaml_mapping

    raw = read_yaml_mapping(path, "data set config", SynthError)
    base = DatasetConfig()
    known = set(asdict(base))
    unknown = set(raw) - known
    if unknown:
        raise SynthError(f"unknown keys in {path}: {sorted(unknown)}; known: {sorted(known)}")
    kw = {}
    for key, value in raw.items():
        if key in SPLITS:
            current = getattr(base, key)
            if not isinstance(value, dict) or set(value) - {"n_slides", "sites", "mix", "tumour_mix"}:
                raise SynthError(f"{path}: {key} must map n_slides / sites / mix / tumour_mix")
            kw[key] = SplitConfig(
                int(value.get("n_slides", current.n_slides)),
                tuple(value.get("sites", current.sites)),
                dict(value.get("mix", current.mix)),
                dict(value.get("tumour_mix", current.tumour_mix)),
            )
        else:
            kw[key] = value
    return replace(base, **kw, **overrides)


def slide_seed(dataset_seed: int, split_index: int, slide_index: int) -> int:
    return int(np.random.SeedSequence([dataset_seed, split_index, slide_index]).generate_state(1)[0])


def _slides(cfg: DatasetConfig):
    """(split, index, site, slide seed, relative path, layout config) of every slide, in order."""
    for split_index, (split, sc) in enumerate(cfg.splits().items()):
        rng = np.random.default_rng([cfg.seed, split_index, 99])
        types, weights = list(sc.tumour_mix), np.array(list(sc.tumour_mix.values()), float)
        for i in range(sc.n_slides):
            site = sc.sites[i % len(sc.sites)]
            seed = slide_seed(cfg.seed, split_index, i)
            lcfg = LayoutConfig(
                cfg.width_px,
                cfg.height_px,
                seed=seed,
                site=site,
                mix=tuple(sc.mix.items()),
                tumour_type=str(rng.choice(types, p=weights / weights.sum())),
                look=cfg.look,
                smallest_node_um=cfg.smallest_node_um,
            )
            yield split, i, site, seed, Path(split) / f"{split}_{i:04d}.tiff", lcfg


def _itc_kind(node: dict) -> str:
    """An ITC node's kind: diffuse-type single cells, or cohesive tumour cells (single or clusters)."""
    return "diffuse" if all(d["kind"] == "diffuse" for d in node["deposits"]) else "cohesive"


def _composition(slides: list[tuple[str, str, int, dict]]) -> dict:
    """Per split: slides, seeds, sites, LNs per category, ITC nodes per kind, positive slides."""
    out: dict[str, dict] = {}
    for split, site, seed, gt in slides:
        c = out.setdefault(
            split,
            {
                "n_slides": 0,
                "n_lns": 0,
                "sites": {},
                "categories": {},
                "itc_kinds": {},
                "positive_slides": 0,
                "seeds": [],
            },
        )
        c["n_slides"] += 1
        c["seeds"].append(seed)
        c["sites"][site] = c["sites"].get(site, 0) + 1
        c["positive_slides"] += gt["slide_label"]
        for node in gt["nodes"]:
            c["n_lns"] += 1
            c["categories"][node["category"]] = c["categories"].get(node["category"], 0) + 1
            if node["category"] == ITC:
                kind = _itc_kind(node)
                c["itc_kinds"][kind] = c["itc_kinds"].get(kind, 0) + 1
    return out


def plan_dataset(cfg: DatasetConfig) -> dict:
    """The composition ``build_dataset`` would write for ``cfg``, from the layouts alone (no pixels)."""
    cfg.validate()
    rows = [
        (split, site, seed, ground_truth(build_layout(lcfg)))
        for split, _, site, seed, _, lcfg in _slides(cfg)
    ]
    return _composition(rows)


def build_dataset(out_dir: str | Path, cfg: DatasetConfig, workers: int = 2, overwrite: bool = False) -> Path:
    """Write all slides, their ground truth and the manifest; returns the manifest path.

    The manifest is written last, so a data set folder with a manifest is complete."""
    cfg.validate()
    out = Path(out_dir)
    manifest = out / MANIFEST_NAME
    refuse_existing(manifest, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    gts = []
    for split, i, site, seed, rel, lcfg in _slides(cfg):
        t0 = time.perf_counter()
        gt = write_slide(
            out / rel,
            lcfg,
            tile_px=cfg.tile_px,
            quality=cfg.quality,
            workers=workers,
            overwrite=overwrite,
        )
        log.info("%s: %d LNs, %.1f s", rel, len(gt["nodes"]), time.perf_counter() - t0)
        gts.append((split, site, seed, gt))
        for node in gt["nodes"]:
            rows.append(
                {
                    "split": split,
                    "slide": str(rel),
                    "ground_truth": str(gt_path_for(rel)),
                    "slide_id": f"{split}_{i:04d}",
                    "ln_id": node["id"],
                    "label": node["label"],
                    "category": node["category"],
                    "largest_extent_um": node["largest_extent_um"],
                    "contour": node["contour"],
                    "bbox": node["bbox"],
                    "site": site,
                    "mpp": gt["mpp"],
                    "slide_label": gt["slide_label"],
                    "seed": seed,
                }
            )
    summary = {"config": asdict(cfg), "n_rows": len(rows), "counts": {}, "composition": _composition(gts)}
    for r in rows:
        key = f"{r['split']}/{r['category']}"
        summary["counts"][key] = summary["counts"].get(key, 0) + 1
    write_text_atomic(out / "dataset.json", json.dumps(summary, indent=1), overwrite=True)
    write_manifest(manifest, rows, overwrite=overwrite)
    return manifest
