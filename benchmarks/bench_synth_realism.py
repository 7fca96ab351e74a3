"""How far synthetic tiles are from real H&E: statistics, a real-vs-synthetic classifier and a figure.

Real tiles: the PatchCamelyon examples in ``../shared/data/pcam_examples.jpg`` (a 4 x 16 grid of
100 px tiles, PCam's 96 px patches at 0.972 um/px shown at 0.933 um/px; tiles with PCam's green
label square are left out) and tissue tiles of the Aperio slide ``cmu_small_region.svs`` (20x,
0.499 um/px, real H&E though not a lymph node). Synthetic tiles: ``lnassist.synth`` slides of every
stain site, sampled per tissue type from the layout's region map, JPEG-compressed as the TIFF writer
stores them. Every tile is brought to ``TILE_MPP`` (100 px) and JPEG-encoded once more at the quality
of the PCam figure, so no side carries a compression the other lacks.

Per tile: colour, H and E optical density (Ruifrok-Johnston colour deconvolution), nuclei (H OD
above ``NUCLEUS_H_OD``: size and darkness), sharpness (Laplacian energy), the radial power spectrum
and the fine-noise level. A logistic regression on these features, cross-validated (stratified 5-fold,
repeated), scores real vs synthetic; its AUC comes with DeLong's 95% CI (``lnassist.metrics``).
Deterministic for ``--seed``. The package measured is whichever ``lnassist`` Python imports, so the
renderer of another checkout is measured with ``PYTHONPATH=that/checkout``; the JSON records which.

    PYTHONPATH=. python benchmarks/bench_synth_realism.py --tag after
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

import lnassist
from lnassist.metrics import delong_auc
from lnassist.synth import layout as L
from lnassist.synth.render import render_concentrations, render_region

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PCAM_JPG = DATA / "pcam_examples.jpg"
SVS = DATA / "cmu_small_region.svs"
PCAM_GRID_PX = 100
TILE_MPP = 0.972 * 96 / PCAM_GRID_PX  # PCam patch (96 px at 0.972 um/px) as drawn in the figure
FIGURE_JPEG_QUALITY = 95  # the PCam figure's quantisation tables are those of quality ~95
SYNTH_TIFF_QUALITY = 85  # lnassist.synth.tiff.DEFAULT_QUALITY, what the "vector" look is stored at
SVS_MPP = 0.499
NUCLEUS_H_OD = 0.55
MIN_TISSUE_FRACTION = 0.3
# Ruifrok & Johnston's H, E and residual OD vectors (rows), for the deconvolution.
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_INV = np.linalg.inv(_HED / np.linalg.norm(_HED, axis=1, keepdims=True))
TISSUE_TYPES = {
    "lymphoid": (L.CORTEX, L.MANTLE, L.GERMINAL),
    "sinus/medulla": (L.SINUS, L.MEDULLA, L.HISTIO, L.HEV_LUMEN),
    "capsule/stroma": (L.CAPSULE, L.STROMA, L.VESSEL),
    "fat": (L.FAT,),
    "tumour": (L.TUMOUR, L.TUMOUR_DIFFUSE, L.GLAND_LUMEN),
}
SITES = ("A", "B", "C", "D")
SPECTRUM_BANDS = 8


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _to_tile(rgb: np.ndarray) -> np.ndarray:
    small = cv2.resize(rgb, (PCAM_GRID_PX, PCAM_GRID_PX), interpolation=cv2.INTER_AREA)
    return _jpeg(small, FIGURE_JPEG_QUALITY)


def _tissue_fraction(rgb: np.ndarray) -> float:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return float(((hsv[..., 1] > 20) & (hsv[..., 2] < 245)).mean())


def _has_label_square(tile: np.ndarray) -> bool:
    """PCam's translucent green square over the centre raises G - R there against the tile's rim."""
    g_minus_r = tile[..., 1].astype(int) - tile[..., 0].astype(int)
    rim = np.ones(g_minus_r.shape, bool)
    rim[25:75, 25:75] = False
    return g_minus_r[38:62, 38:62].mean() - g_minus_r[rim].mean() > 30


def pcam_tiles() -> list[np.ndarray]:
    grid = cv2.imread(str(PCAM_JPG), cv2.IMREAD_COLOR)[..., ::-1]
    tiles = []
    for r in range(grid.shape[0] // PCAM_GRID_PX):
        for c in range(grid.shape[1] // PCAM_GRID_PX):
            t = grid[r * PCAM_GRID_PX : (r + 1) * PCAM_GRID_PX, c * PCAM_GRID_PX : (c + 1) * PCAM_GRID_PX]
            if not _has_label_square(t) and _tissue_fraction(t) >= MIN_TISSUE_FRACTION:
                tiles.append(np.ascontiguousarray(t))
    return tiles


def svs_tiles(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(SVS) as tf:
        base = tf.pages[0].asarray()
    side = int(round(PCAM_GRID_PX * TILE_MPP / SVS_MPP))
    tiles = []
    for _ in range(n * 40):
        y, x = rng.integers(0, base.shape[0] - side), rng.integers(0, base.shape[1] - side)
        t = _to_tile(base[y : y + side, x : x + side])
        if _tissue_fraction(t) >= MIN_TISSUE_FRACTION:
            tiles.append(t)
            if len(tiles) == n:
                break
    return tiles


def synth_tiles(seed: int, per_type: int, look: str | None) -> dict[str, list[np.ndarray]]:
    """Tiles per tissue type from slides of every site, sampled where the layout puts that tissue."""
    side = int(round(PCAM_GRID_PX * TILE_MPP / L.MPP_20X))
    out: dict[str, list[np.ndarray]] = {t: [] for t in TISSUE_TYPES}
    rng = np.random.default_rng([seed, 1])
    per_slide = max(1, per_type // len(SITES))
    for i, site in enumerate(SITES * 2):
        cfg = L.LayoutConfig(
            14000,
            14000,
            seed=seed * 100 + i,
            site=site,
            categories=("macro",) if i % 2 == 0 else ("micro", "negative_mimic"),
        )
        lay = L.build_layout(replace(cfg, look=look) if look else cfg)
        # As write_slide stores it; a renderer without looks stores every slide at the default quality.
        quality = lay.scanner.jpeg_quality if look == "scanned" else SYNTH_TIFF_QUALITY
        got = {t: 0 for t in TISSUE_TYPES}
        for _ in range(600):
            node = lay.nodes[int(rng.integers(len(lay.nodes)))]
            lo, hi = node.contour.min(0) - 300, node.contour.max(0) + 300
            x, y = (int(v) for v in rng.uniform(lo, hi))
            maps = render_concentrations(lay, x, y, side, side)
            if maps is None:
                continue
            counts = np.bincount(maps[2].ravel(), minlength=L.N_REGIONS)
            kind = next(
                (t for t, regs in TISSUE_TYPES.items() if counts[list(regs)].sum() > 0.7 * side * side), None
            )
            if kind is None or got[kind] >= per_slide or len(out[kind]) >= per_type:
                continue
            t = _to_tile(_jpeg(render_region(lay, x, y, side, side), quality))
            if _tissue_fraction(t) >= MIN_TISSUE_FRACTION:
                out[kind].append(t)
                got[kind] += 1
    return out


def optical_density(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, E) optical-density maps by Ruifrok-Johnston colour deconvolution."""
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    hed = od.reshape(-1, 3) @ _HED_INV
    return hed[:, 0].reshape(rgb.shape[:2]), hed[:, 1].reshape(rgb.shape[:2])


def radial_spectrum(grey: np.ndarray) -> np.ndarray:
    """Share of the (mean-removed, windowed) power in ``SPECTRUM_BANDS`` radial frequency bands."""
    g = (grey - grey.mean()) * np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))
    p = np.abs(np.fft.fftshift(np.fft.fft2(g))) ** 2
    yy, xx = np.indices(p.shape)
    r = np.hypot(yy - p.shape[0] // 2, xx - p.shape[1] // 2) / (p.shape[0] / 2)
    band = np.minimum((r * SPECTRUM_BANDS).astype(int), SPECTRUM_BANDS)
    power = np.bincount(band.ravel(), p.ravel(), minlength=SPECTRUM_BANDS + 1)[:SPECTRUM_BANDS]
    return power / max(power.sum(), 1e-12)


def nuclei(h_od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas (um^2) and mean H OD of connected nuclear blobs (H OD above threshold, opened)."""
    mask = cv2.morphologyEx((h_od > NUCLEUS_H_OD).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, lab, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(0), np.zeros(0)
    areas = st[1:, cv2.CC_STAT_AREA].astype(float)
    dark = np.bincount(lab.ravel(), h_od.ravel(), minlength=n)[1:] / areas
    keep = areas >= 3
    return areas[keep] * TILE_MPP**2, dark[keep]


FEATURES = (
    [f"rgb_mean_{c}" for c in "rgb"]
    + [f"rgb_std_{c}" for c in "rgb"]
    + ["sat_mean", "sat_std", "val_mean", "val_std"]
    + [f"h_od_p{q}" for q in (10, 50, 90)]
    + [f"e_od_p{q}" for q in (10, 50, 90)]
    + ["he_corr", "nuclear_fraction", "nucleus_area_median_um2", "nucleus_darkness_median", "nuclei_per_mm2"]
    + ["log_laplacian_energy", "log_fine_noise"]
    + [f"spectrum_band{b}" for b in range(SPECTRUM_BANDS)]
)


def tile_stats(rgb: np.ndarray) -> dict:
    """Per-tile statistics: the classifier's features and the raw distributions behind them."""
    f = rgb.astype(np.float64)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)
    h_od, e_od = optical_density(rgb)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    lap = cv2.Laplacian(grey, cv2.CV_64F, ksize=3)
    fine = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    areas, dark = nuclei(h_od)
    spectrum = radial_spectrum(grey)
    tissue = hsv[..., 1] > 20
    he = np.corrcoef(h_od.ravel(), e_od.ravel())[0, 1] if h_od.std() > 0 and e_od.std() > 0 else 0.0
    vec = np.concatenate(
        [
            f.reshape(-1, 3).mean(0),
            f.reshape(-1, 3).std(0),
            [hsv[..., 1].mean(), hsv[..., 1].std(), hsv[..., 2].mean(), hsv[..., 2].std()],
            np.percentile(h_od, [10, 50, 90]),
            np.percentile(e_od, [10, 50, 90]),
            [
                he,
                float((h_od > NUCLEUS_H_OD).mean()),
                float(np.median(areas)) if len(areas) else 0.0,
                float(np.median(dark)) if len(dark) else 0.0,
                len(areas) / (rgb.shape[0] * rgb.shape[1] * TILE_MPP**2 / 1e6),
                float(np.log10((lap**2).mean() + 1e-6)),
                float(np.log10(fine[tissue].std() + 1e-6)) if tissue.sum() > 50 else 0.0,
            ],
            spectrum,
        ]
    )
    return {"features": vec, "h_od": h_od.ravel(), "e_od": e_od.ravel(), "areas": areas, "dark": dark}


# Statistics of the finest scales (~1-5 um at TILE_MPP). They tell the two real sources apart as well:
# they carry how a scanner and its downsampling render detail, not only what the tissue holds.
FINE_SCALE = frozenset(
    ["log_laplacian_energy", "log_fine_noise"] + [f"spectrum_band{b}" for b in range(3, SPECTRUM_BANDS)]
)


def classify(
    x_real: np.ndarray, x_synth: np.ndarray, seed: int, repeats: int = 5, features: list[str] = FEATURES
) -> dict:
    """Cross-validated logistic regression real (1) vs synthetic (0) on the named ``features``:
    out-of-fold scores averaged over ``repeats`` shuffles, AUC with DeLong's CI, and the features it
    leans on most."""
    cols = [FEATURES.index(f) for f in features]
    x_real, x_synth = x_real[:, cols], x_synth[:, cols]
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([x_real, x_synth])
    y = np.r_[np.ones(len(x_real), int), np.zeros(len(x_synth), int)]
    scores = np.zeros(len(y))
    for rep in range(repeats):
        folds = StratifiedKFold(5, shuffle=True, random_state=seed * 1000 + rep)
        for train, test in folds.split(x, y):
            model = make_pipeline(
                StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced")
            )
            model.fit(x[train], y[train])
            scores[test] += model.decision_function(x[test]) / repeats
    res = delong_auc(y, scores)
    full = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced"))
    full.fit(x, y)
    coef = full[-1].coef_[0]
    top = np.argsort(-np.abs(coef))[:6]
    return {
        "auc": round(res.auc, 4),
        "ci95": [round(res.ci_low, 4), round(res.ci_high, 4)],
        "n_real": int(len(x_real)),
        "n_synthetic": int(len(x_synth)),
        "top_features": [[features[i], round(float(coef[i]), 3)] for i in top],
    }


def _summary(values: np.ndarray) -> dict:
    q = np.percentile(values, [5, 25, 50, 75, 95]) if len(values) else [float("nan")] * 5
    return dict(zip(("p5", "p25", "p50", "p75", "p95"), (round(float(v), 4) for v in q), strict=True))


def _within_real(real: np.ndarray, synth: np.ndarray) -> float:
    lo, hi = np.percentile(real, [5, 95])
    return round(float(((synth >= lo) & (synth <= hi)).mean()), 3)


def figure(path: Path, real: dict[str, list], synth: dict[str, list], stats: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(real.items()) + list(synth.items())
    n_cols = 10
    fig = plt.figure(figsize=(n_cols * 0.9 + 2.2, len(rows) * 0.9 + 3.2), dpi=110)
    gs = fig.add_gridspec(len(rows) + 4, n_cols + 2)
    for r, (name, tiles) in enumerate(rows):
        ax = fig.add_subplot(gs[r, :2])
        ax.axis("off")
        ax.text(1.0, 0.5, name, ha="right", va="center", fontsize=8)
        for c in range(n_cols):
            ax = fig.add_subplot(gs[r, c + 2])
            ax.axis("off")
            if c < len(tiles):
                ax.imshow(tiles[c])
    plots = [
        ("H OD", "h_od", np.linspace(-0.2, 1.6, 50)),
        ("E OD", "e_od", np.linspace(-0.2, 1.2, 50)),
        ("nucleus area (um^2)", "areas", np.linspace(0, 120, 40)),
    ]
    for i, (label, key, bins) in enumerate(plots):
        ax = fig.add_subplot(gs[len(rows) + 1 :, i * 3 : i * 3 + 3])
        for side, colour in (("real", "tab:blue"), ("synthetic", "tab:red")):
            ax.hist(
                np.clip(stats[side][key], bins[0], bins[-1]),
                bins,
                density=True,
                histtype="step",
                color=colour,
                label=side,
            )
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6)
    ax = fig.add_subplot(gs[len(rows) + 1 :, 9:12])
    for side, colour in (("real", "tab:blue"), ("synthetic", "tab:red")):
        ax.semilogy(np.arange(SPECTRUM_BANDS) + 0.5, stats[side]["spectrum"], color=colour, label=side)
    ax.set_title("radial power spectrum (share per band)", fontsize=8)
    ax.tick_params(which="both", labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True, help="name of this measurement (before, after, ...)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-type", type=int, default=24, help="synthetic tiles per tissue type")
    ap.add_argument("--svs-tiles", type=int, default=40)
    ap.add_argument("--look", default=None, help="layout.LOOKS entry; default: the renderer's")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    real = {"PCam (LN, real)": pcam_tiles(), "Aperio CMU-1 (skin, real)": svs_tiles(rng, args.svs_tiles)}
    synth = {f"synthetic {k}": v for k, v in synth_tiles(args.seed, args.per_type, args.look).items()}
    per = {name: [tile_stats(t) for t in tiles] for name, tiles in {**real, **synth}.items()}

    def pooled(names: list[str]) -> dict:
        s = [st for n in names for st in per[n]]
        return {
            "features": np.array([st["features"] for st in s]),
            **{k: np.concatenate([st[k] for st in s]) for k in ("h_od", "e_od", "areas", "dark")},
        }

    pcam, svs_name = list(real)
    sides = {"real": pooled([pcam]), "synthetic": pooled(list(synth))}
    aperio = pooled([svs_name])
    band = [FEATURES.index(f"spectrum_band{b}") for b in range(SPECTRUM_BANDS)]
    for side in sides.values():
        side["spectrum"] = side["features"][:, band].mean(0)
    classifiers = {
        "pcam_vs_synthetic": classify(sides["real"]["features"], sides["synthetic"]["features"], args.seed),
        "pcam_and_aperio_vs_synthetic": classify(
            pooled([pcam, svs_name])["features"], sides["synthetic"]["features"], args.seed
        ),
        # Reference: how well the same classifier tells two real sources (LN at 40x, skin at 20x) apart.
        "pcam_vs_aperio": classify(sides["real"]["features"], aperio["features"], args.seed),
    }
    # The same pairs on the fine-scale statistics alone, and on everything else (colour, stain, nuclei,
    # coarser spectrum): where the distance lies.
    for part, names in (
        ("fine_scale", [f for f in FEATURES if f in FINE_SCALE]),
        ("content", [f for f in FEATURES if f not in FINE_SCALE]),
    ):
        for pair, other in (("synthetic", sides["synthetic"]), ("aperio", aperio)):
            classifiers[f"pcam_vs_{pair}_{part}"] = classify(
                sides["real"]["features"], other["features"], args.seed, features=names
            )
    statistics = {}
    for key in ("h_od", "e_od", "areas", "dark"):
        statistics[key] = {
            "real_pcam": _summary(sides["real"][key]),
            "synthetic": _summary(sides["synthetic"][key]),
        }
    for i, name in enumerate(FEATURES):
        r, s = sides["real"]["features"][:, i], sides["synthetic"]["features"][:, i]
        statistics[name] = {
            "real_pcam_median": round(float(np.median(r)), 4),
            "synthetic_median": round(float(np.median(s)), 4),
            "real_aperio_median": round(float(np.median(aperio["features"][:, i])), 4),
            "synthetic_within_real_p5_p95": _within_real(r, s),
        }
    per_type = {
        name: classify(sides["real"]["features"], np.array([st["features"] for st in per[name]]), args.seed)[
            "auc"
        ]
        for name in synth
        if len(per[name]) >= 5
    }
    out = {
        "benchmark": "synthetic vs real H&E tiles (statistics, real-vs-synthetic classifier)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "lnassist_source": str(Path(lnassist.__file__).parent),
        "lnassist_commit": _commit(Path(lnassist.__file__).parent),
        "tile_mpp": round(TILE_MPP, 4),
        "tile_px": PCAM_GRID_PX,
        "n_tiles": {k: len(v) for k, v in {**real, **synth}.items()},
        "classifier": classifiers,
        "auc_pcam_vs_each_synthetic_type": per_type,
        "statistics": statistics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"synth_realism_{args.tag}.json").write_text(json.dumps(out, indent=1))
    c = classifiers["pcam_vs_synthetic"]
    figure(
        RESULTS / f"synth_realism_{args.tag}.png",
        real,
        synth,
        sides,
        f"{args.tag}: real (top) vs synthetic tiles at {TILE_MPP:.3f} um/px; "
        f"PCam-vs-synthetic AUC {c['auc']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]",
    )
    print(json.dumps({"classifier": classifiers, "per_type": per_type, "seconds": out["seconds"]}, indent=1))
    return 0


def _commit(src: Path) -> str:
    proc = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "."], capture_output=True, text=True
    )
    return proc.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
