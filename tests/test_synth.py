"""Synthetic slide generator: ground truth obeys the category definitions, renders are seamless and
deterministic, the rendered tissue matches the ground truth, and the TIFF reads back with the right
resolution in openslide and large_image. Layouts here are the "vector" look, whose flat rendering these
tests read directly; test_synth_look.py and test_synth_anatomy.py cover the "scanned" default."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
from source_helpers import render_in_pieces

from lnassist.categories import (
    CATEGORIES,
    ITC,
    MACRO,
    MACRO_MIN_UM,
    MICRO,
    MICRO_MIN_UM,
    NEGATIVE,
    NEGATIVE_MIMIC,
    category_of_extent,
)
from lnassist.commands.synth import add_cli
from lnassist.manifest import read_manifest
from lnassist.synth import SynthError, geometry
from lnassist.synth import layout as L
from lnassist.synth.dataset import DatasetConfig, SplitConfig, build_dataset, load_config, plan_dataset
from lnassist.synth.generate import gt_path_for, write_slide
from lnassist.synth.render import LUT_E, LUT_H, render_concentrations, render_region
from lnassist.synth.stain import concentrations_to_rgb
from lnassist.synth.tiff import COARSEST_MPP, write_pyramid

ALL_KINDS = (MACRO, MICRO, ITC, NEGATIVE_MIMIC, NEGATIVE)


@pytest.fixture(scope="module")
def big_layout() -> L.SlideLayout:
    return L.build_layout(
        L.LayoutConfig(14000, 14000, seed=7, categories=ALL_KINDS, tumour_type="intestinal", look="vector")
    )


def _small_config(seed: int) -> L.LayoutConfig:
    return L.LayoutConfig(5000, 5000, seed=seed, categories=(ITC, NEGATIVE_MIMIC), look="vector")


@pytest.fixture(scope="module")
def small_layout() -> L.SlideLayout:
    return L.build_layout(_small_config(11))


def _mask(shape, polygons, x0=0, y0=0) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for p in polygons:
        cv2.fillPoly(m, [np.round(np.asarray(p) - (x0, y0)).astype(np.int32)], 1)
    return m.astype(bool)


# --- ground truth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("tumour_type", L.TUMOUR_TYPES)
@pytest.mark.parametrize("look", L.LOOKS)
def test_categories_obey_size_definitions(seed, tumour_type, look):
    lay = L.build_layout(
        L.LayoutConfig(14000, 14000, seed=seed, categories=ALL_KINDS, tumour_type=tumour_type, look=look)
    )
    assert sorted(n.category for n in lay.nodes) == sorted(ALL_KINDS)
    micro_px, macro_px = MICRO_MIN_UM / lay.mpp, MACRO_MIN_UM / lay.mpp
    for n in lay.nodes:
        extents = [geometry.extent(d.polygon) for d in n.deposits]
        assert np.allclose(extents, [d.extent_px for d in n.deposits])
        largest = max(extents, default=0.0)
        if n.category == MACRO:
            assert largest >= macro_px
        elif n.category == MICRO:
            assert micro_px <= largest < macro_px
        elif n.category == ITC:
            assert 0 < largest < micro_px
        else:
            assert not n.deposits
        assert n.label == int(n.category in (ITC, MICRO, MACRO))
        assert category_of_extent(largest, lay.mpp) == (n.category if n.deposits else NEGATIVE)
        for d in n.deposits:
            assert len(d.cells) >= 1
            # every tumour cell body lies inside its deposit polygon, every deposit inside its node
            assert geometry.inside_with_margin(d.cells, d.polygon, L.CELL_BODY_RADIUS_PX - 1).all()
            assert geometry.points_in_polygon(d.polygon, n.contour).all()
    assert lay.slide_label == 1


def test_category_thresholds_in_pixels():
    mpp = L.MPP_20X
    assert category_of_extent(4348, mpp) == MACRO and category_of_extent(4347, mpp) == MICRO
    assert category_of_extent(435, mpp) == MICRO and category_of_extent(434, mpp) == ITC
    assert category_of_extent(0, mpp) == NEGATIVE


def test_default_mix_gives_several_nodes_of_varied_size():
    lay = L.build_layout(L.LayoutConfig(20000, 20000, seed=5, look="vector"))
    assert 3 <= len(lay.nodes) <= 10
    diam_mm = [np.ptp(n.contour, axis=0).max() * lay.mpp / 1000 for n in lay.nodes]
    assert all(0.9 <= d <= 8.5 for d in diam_mm)
    assert all(n.category in CATEGORIES for n in lay.nodes)


# --- rendering ------------------------------------------------------------------------------------


def test_render_is_seamless_across_tiles(big_layout):
    node = next(n for n in big_layout.nodes if n.category == MACRO)
    x0, y0 = (node.contour[0] - 300).astype(int)  # window straddling capsule, fat and cortex
    whole, stitched = render_in_pieces(big_layout, x0, y0)
    assert np.array_equal(whole, stitched)
    assert whole.std() > 20  # not a blank window


def test_render_is_deterministic(small_layout):
    again = L.build_layout(_small_config(11))
    other = L.build_layout(_small_config(12))
    c = small_layout.nodes[0].centre.astype(int)
    a = render_region(small_layout, c[0] - 200, c[1] - 200, 400, 400)
    assert np.array_equal(a, render_region(again, c[0] - 200, c[1] - 200, 400, 400))
    assert not np.array_equal(a, render_region(other, c[0] - 200, c[1] - 200, 400, 400))


@pytest.fixture(scope="module")
def small_render(small_layout):
    """The whole small slide rendered once: (H, E, region, rgb)."""
    lay = small_layout
    H, E, region = render_concentrations(lay, 0, 0, lay.width_px, lay.height_px)
    rgb = concentrations_to_rgb(H, E, lay.site.od_matrix())
    rgb[region == L.GLASS] = 255
    return H, E, region, rgb


def test_glass_is_white_and_tissue_is_not(small_layout, small_render):
    rgb = small_render[3]
    assert np.array_equal(rgb[1000:1300, 2000:2400], render_region(small_layout, 2000, 1000, 400, 300))
    assert (rgb == 255).all(axis=2).mean() > 0.05  # some glass
    inside = _mask(rgb.shape[:2], [n.contour for n in small_layout.nodes])
    assert (rgb[inside] < 250).any(axis=1).mean() > 0.99


def test_lymph_nodes_are_where_the_contours_say(small_layout, small_render):
    """Haematoxylin-dense (dark) pixels concentrate inside the LN contours; fat around is pale."""
    H, _, region, _ = small_render
    inside = _mask(H.shape, [n.contour for n in small_layout.nodes])
    outside = (region != L.GLASS) & ~cv2.dilate(inside.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(
        bool
    )
    dense_in = (H[inside] > 0.6).mean()
    dense_out = (H[outside] > 0.6).mean()
    assert dense_in > 0.25 and dense_out < 0.05, (dense_in, dense_out)


def _nuclear_radius_p95(H: np.ndarray, region: np.ndarray) -> float:
    """95th percentile of the distance to the nucleus border (px) over nuclear pixels: nucleus size."""
    nuc = ((H > 0.3) & region).astype(np.uint8)
    dist = cv2.distanceTransform(nuc, cv2.DIST_L2, 5)
    return float(np.percentile(dist[nuc > 0], 95))


def test_tumour_deposit_looks_like_tumour(big_layout):
    """Inside a (cohesive) macrometastasis: more eosin and larger, paler nuclei than lymphoid cortex."""
    lay = next(
        lay
        for seed in range(40)
        for lay in [
            L.build_layout(
                L.LayoutConfig(
                    14000, 14000, seed=seed, categories=(MACRO, NEGATIVE), tumour_type="intestinal",
                    look="vector",
                )
            )
        ]
        if next(n for n in lay.nodes if n.category == MACRO).deposits[0].kind == "cohesive"
    )
    node = next(n for n in lay.nodes if n.category == MACRO)
    dep = node.deposits[0]
    c = dep.polygon.mean(axis=0)
    size = 1400
    x0, y0 = int(c[0] - size / 2), int(c[1] - size / 2)
    H, E, _ = render_concentrations(lay, x0, y0, size, size)
    tum = _mask(H.shape, [dep.polygon], x0, y0)
    tum = cv2.erode(tum.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
    assert tum.sum() > 10_000
    # lymphoid reference: cortex of a negative node of the same slide
    neg = next(n for n in lay.nodes if n.category == NEGATIVE)
    nx, ny = (neg.centre - 400).astype(int)
    Hn, En, region_n = render_concentrations(lay, nx, ny, 800, 800)
    cortex = region_n == L.CORTEX
    assert cortex.sum() > 10_000
    assert E[tum].mean() > 1.5 * En[cortex].mean()
    # larger nuclei (lymphocytes: radius ~6 px; tumour: 10-15 px) ...
    assert _nuclear_radius_p95(H, tum) > 1.2 * _nuclear_radius_p95(Hn, cortex)
    # ... with paler (vesicular) chromatin: fewer of the nuclear pixels are very dark
    dark = lambda h, r: (h[r & (h > 0.3)] > 0.9).mean()
    assert dark(H, tum) < 0.6 * dark(Hn, cortex)


def test_itc_cells_are_rendered_at_their_centres(big_layout):
    """Each ITC cell shows up where the ground truth puts it: eosinophilic cell body in a pale sinus."""
    lay = big_layout
    node = next(n for n in lay.nodes if n.category == ITC)
    assert node.deposits
    yy, xx = np.mgrid[-20:20, -20:20]
    core = np.hypot(xx + 0.5, yy + 0.5) < 4
    for dep in node.deposits[:4]:
        cx, cy = np.floor(dep.cells[0]).astype(int)
        H, E, _ = render_concentrations(lay, cx - 20, cy - 20, 40, 40)
        assert E.max() > 2.5 * LUT_E[L.SINUS], E.max()  # eosinophilic cytoplasm (sinus itself is pale)
        assert H[core].mean() > 3 * LUT_H[L.SINUS], H[core].mean()  # a nucleus at the recorded centre


# --- TIFF, ground truth file, data set, CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def written_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "s.tiff"
    gt = write_slide(path, L.LayoutConfig(4000, 3000, seed=3, categories=(ITC,), look="vector"), tile_px=256)
    return path, gt


def test_tiff_metadata_roundtrip(written_slide):
    import large_image
    import openslide

    path, gt = written_slide
    slide = openslide.OpenSlide(str(path))
    props = slide.properties
    assert float(props["openslide.mpp-x"]) == pytest.approx(0.46)
    assert float(props["openslide.mpp-y"]) == pytest.approx(0.46)
    assert float(props["openslide.objective-power"]) == 20
    assert slide.dimensions == (4000, 3000)
    assert 0.46 * slide.level_downsamples[-1] >= COARSEST_MPP * 0.99
    meta = large_image.open(str(path)).getMetadata()
    assert meta["mm_x"] == pytest.approx(0.46e-3) and meta["mm_y"] == pytest.approx(0.46e-3)
    assert meta["magnification"] == pytest.approx(20)
    assert (meta["sizeX"], meta["sizeY"]) == (4000, 3000)
    # level 0 pixels are the rendered pixels (JPEG error only)
    lay = L.build_layout(L.LayoutConfig(4000, 3000, seed=3, categories=(ITC,), look="vector"))
    c = lay.nodes[0].centre.astype(int)
    read = np.asarray(slide.read_region((int(c[0]), int(c[1])), 0, (300, 200)).convert("RGB")).astype(int)
    assert np.abs(read - render_region(lay, int(c[0]), int(c[1]), 300, 200).astype(int)).mean() < 6
    # reduced levels are flagged and smaller by 2x each
    import tifffile

    with tifffile.TiffFile(path) as tf:
        assert [p.subfiletype for p in tf.pages] == [0] + [1] * (len(tf.pages) - 1)
        assert [p.shape[:2] for p in tf.pages][-1] == tuple(gt["levels"][-1][::-1])


def test_ground_truth_json_matches_layout(written_slide):
    path, gt = written_slide
    on_disk = json.loads(gt_path_for(path).read_text())
    assert on_disk["width_px"] == 4000 and on_disk["mpp"] == pytest.approx(0.46)
    assert on_disk["magnification"] == pytest.approx(20)
    assert [n["category"] for n in on_disk["nodes"]] == [ITC]
    node = on_disk["nodes"][0]
    assert node["label"] == 1 and on_disk["slide_label"] == 1
    assert node["largest_extent_um"] < MICRO_MIN_UM
    assert all(len(d["cells"]) >= 1 for d in node["deposits"])


def test_dataset_manifest_matches_ground_truth(tmp_path):
    cfg = DatasetConfig(
        seed=4,
        width_px=4500,
        height_px=4500,
        tile_px=256,
        train=SplitConfig(1, ("A",)),
        val=SplitConfig(0),
        test=SplitConfig(1, ("C",), {ITC: 1.0}),
        unseen=SplitConfig(1, ("E",), {ITC: 1.0}, {"diffuse": 1.0}),
    )
    manifest = build_dataset(tmp_path, cfg, workers=2)
    rows = read_manifest(manifest)
    assert {r["split"] for r in rows} == {"train", "test", "unseen"}
    # The composition in dataset.json is the plan's, made from the layouts alone.
    composition = json.loads((tmp_path / "dataset.json").read_text())["composition"]
    assert composition == plan_dataset(cfg)
    n_itc = sum(r["category"] == ITC for r in rows if r["split"] == "unseen")
    assert composition["unseen"]["itc_kinds"] == {"diffuse": n_itc} and n_itc >= 1
    assert composition["unseen"]["sites"] == {"E": 1} and composition["train"]["n_slides"] == 1
    for split, site in (("train", "A"), ("test", "C"), ("unseen", "E")):
        srows = [r for r in rows if r["split"] == split]
        gt = json.loads((tmp_path / srows[0]["ground_truth"]).read_text())
        assert (tmp_path / srows[0]["slide"]).exists()
        assert len(srows) == len(gt["nodes"])
        for r, n in zip(srows, gt["nodes"], strict=True):
            assert (r["ln_id"], r["label"], r["category"], r["contour"]) == (
                n["id"],
                n["label"],
                n["category"],
                n["contour"],
            )
            assert r["site"] == site == gt["site"]
    assert all(r["category"] == ITC for r in rows if r["split"] == "test")


def test_cli_synth(tmp_path):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "one.tiff"
    args = parser.parse_args(
        [
            "synth",
            str(out),
            "--seed",
            "2",
            "--width-px",
            "3000",
            "--height-px",
            "3000",
            "--site",
            "B",
            "--categories",
            "negative",
            "--tile-px",
            "256",
        ]
    )
    assert args.func(args) == 0
    gt = json.loads(gt_path_for(out).read_text())
    assert gt["site"] == "B" and [n["category"] for n in gt["nodes"]] == [NEGATIVE]
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(out), "--width-px", "-5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(out), "--categories", "bogus"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width_px=-10, height_px=5000), "at least"),
        (dict(width_px=5000, height_px=5000, site="nowhere"), "unknown stain site"),
        (dict(width_px=5000, height_px=5000, categories=("weird",)), "categories"),
        (dict(width_px=5000, height_px=5000, seed=-1), "seed"),
        (dict(width_px=3000, height_px=3000, categories=(MACRO,)), "needs >= 2.9 mm"),
        (dict(width_px=5000, height_px=5000, mix=((NEGATIVE, -1.0),)), "mix"),
    ],
)
def test_bad_layout_arguments(kwargs, match):
    kwargs.setdefault("seed", 0)
    with pytest.raises(SynthError, match=match):
        L.build_layout(L.LayoutConfig(**kwargs))


def test_bad_render_and_writer_arguments(small_layout, tmp_path):
    with pytest.raises(SynthError, match="positive"):
        render_region(small_layout, 0, 0, 0, 10)
    with pytest.raises(SynthError, match="integer"):
        render_region(small_layout, 0.5, 0, 10, 10)
    with pytest.raises(SynthError, match="positive"):
        write_pyramid(tmp_path / "x.tiff", -1, 10, lambda *a: None, 0.46, 20)
    with pytest.raises(SynthError, match="multiple of 16"):
        write_pyramid(tmp_path / "x.tiff", 100, 100, lambda *a: None, 0.46, 20, tile_px=100)
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("sead: 3\n")
    with pytest.raises(SynthError, match="unknown keys"):
        load_config(bad_yaml)
    with pytest.raises(SynthError, match="mix"):
        DatasetConfig(test=SplitConfig(1, ("A",), {"nonsense": 1.0})).validate()
    with pytest.raises(SynthError, match="tumour-type mix"):
        DatasetConfig(test=SplitConfig(1, ("A",), tumour_mix={"lobular": 1.0})).validate()
    with pytest.raises(SynthError, match=r"unseen split uses sites \['B'\]"):
        DatasetConfig(unseen=SplitConfig(2, ("B", "E"))).validate()


@pytest.mark.slow
def test_the_issue_15_data_set_can_measure_what_it_is_for():
    """models/synth-scanned-v2.yaml: validation >= 100 LNs with >= 25 ITC nodes of each kind, test
    >= 150 LNs, 50-100 training slides, and an unseen split whose sites no train/val slide has."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "models" / "synth-scanned-v2.yaml")
    plan = plan_dataset(cfg)
    assert 50 <= plan["train"]["n_slides"] <= 100
    assert (
        plan["val"]["n_lns"] >= 100
        and min(plan["val"]["itc_kinds"].get(k, 0) for k in ("cohesive", "diffuse")) >= 25
    )
    assert plan["test"]["n_lns"] >= 150
    seen = set(plan["train"]["sites"]) | set(plan["val"]["sites"])
    assert plan["unseen"]["n_lns"] >= 100 and not seen & set(plan["unseen"]["sites"])
