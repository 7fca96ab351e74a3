"""Preparation artefacts of the "scanned" look: folds, tears, bubbles, knife chatter, pen marks, dust.

Each is a generator option (``KINDS``) with a per-site rate (``SITE_RATES``: the expected number per
slide), so a data set can hold combinations one site never shows. They are drawn from their own
random stream after the layout, so nodes, deposits, cells and mimics (the ground truth) are the same
with or without them, and they are placed clear of deposits and mimics, which therefore stay visible.
``apply`` changes a window's stain concentrations in place and returns the extra optical density of
ink and dust; everything is a function of global coordinates, so windows stay seamless. Glass stays
white: artefacts act on tissue only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnassist.slide import polygon_mask
from lnassist.synth import SynthError, geometry

KINDS = ("fold", "tear", "bubble", "chatter", "pen", "dust")
# Expected artefacts per slide. A: careful lab; B: thick sections, bubbles; C: marked slides; D: worn
# knife and a dusty scanner.
SITE_RATES = {
    "A": {"fold": 0.3, "tear": 0.3, "bubble": 0.2, "chatter": 0.1, "pen": 0.2, "dust": 0.3},
    "B": {"fold": 0.8, "tear": 0.3, "bubble": 0.8, "chatter": 0.2, "pen": 0.3, "dust": 0.5},
    "C": {"fold": 0.4, "tear": 0.5, "bubble": 0.3, "chatter": 0.2, "pen": 1.2, "dust": 0.4},
    "D": {"fold": 0.6, "tear": 0.8, "bubble": 0.4, "chatter": 0.9, "pen": 0.4, "dust": 1.2},
    # Unseen sites. E: folded, marked slides; F: chatter and bubbles under the coverslip.
    "E": {"fold": 1.2, "tear": 0.4, "bubble": 0.3, "chatter": 0.3, "pen": 1.0, "dust": 0.5},
    "F": {"fold": 0.4, "tear": 0.6, "bubble": 1.0, "chatter": 1.0, "pen": 0.5, "dust": 0.8},
}
# Ink optical density per RGB channel (blue, green and black marker pens; grey dust).
PEN_OD = {"blue": (0.75, 0.45, 0.08), "green": (0.7, 0.12, 0.55), "black": (0.8, 0.8, 0.75)}
DUST_OD = (0.5, 0.5, 0.5)
FOLD_GAIN = 1.9  # a fold is two layers of section
TEAR_GAIN = 0.04  # almost nothing left in a tear


@dataclass(frozen=True)
class Artefact:
    kind: str
    polygon: np.ndarray | None  # fold, tear, pen, chatter (the band it covers)
    points: np.ndarray | None  # bubble centre, dust specks (x, y, radius) rows
    value: tuple[float, ...]  # kind-specific: pen OD, chatter (period px, amplitude, angle), ...

    def to_dict(self) -> dict:
        out: dict = {"kind": self.kind, "value": [round(float(v), 4) for v in self.value]}
        if self.polygon is not None:
            out["polygon"] = np.round(self.polygon, 1).tolist()
        if self.points is not None:
            out["points"] = np.round(self.points, 1).tolist()
        return out


def scaled(a: Artefact, f: float) -> Artefact:
    """``a`` with its coordinates and lengths multiplied by ``f`` (a slide's copy at another mpp)."""
    value = (a.value[0] * f, *a.value[1:]) if a.kind == "chatter" else a.value
    return Artefact(
        a.kind,
        None if a.polygon is None else a.polygon * f,
        None if a.points is None else a.points * f,
        value,
    )


def check_kinds(kinds: tuple[str, ...]) -> None:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SynthError(f"unknown artefacts {bad}; known: {', '.join(KINDS)}")


def _clear_of(polygon: np.ndarray, keep_out: list[np.ndarray], cells: np.ndarray, margin_px: float) -> bool:
    """No vertex of ``polygon`` near a keep-out polygon (and none of theirs inside it), and no keep-out
    cell centre inside it or within ``margin_px`` of its edge."""
    for k in keep_out:
        if geometry.points_in_polygon(polygon, k).any() or geometry.points_in_polygon(k, polygon).any():
            return False
        if np.abs(geometry.distance_to_boundary(polygon, k)).min() < margin_px:
            return False
    if len(cells):
        if geometry.points_in_polygon(cells, polygon).any():
            return False
        if np.abs(geometry.distance_to_boundary(cells, polygon)).min() < margin_px:
            return False
    return True


def draw(
    rng: np.random.Generator,
    kinds: tuple[str, ...] | None,
    site: str,
    size_px: tuple[int, int],
    mpp: float,
    nodes: list[np.ndarray],
    keep_out: list[np.ndarray],
    keep_out_cells: np.ndarray,
) -> tuple[Artefact, ...]:
    """One slide's artefacts: ``kinds`` each once, or (None) Poisson counts at the site's rates.

    ``nodes`` are node contours (folds, tears and bubbles go through tissue), ``keep_out`` the deposit
    and mimic polygons and ``keep_out_cells`` the (N, 2) centres of scattered mimic cells that
    artefacts must leave visible (scattered cells one by one: a hull of sinus histiocytes spread
    through the sinuses covers the whole node, and no fold would ever fit)."""
    if kinds is None:
        counts = {k: int(rng.poisson(r)) for k, r in SITE_RATES[site].items()}
    else:
        check_kinds(kinds)
        counts = {k: kinds.count(k) for k in KINDS}
    um = lambda v: v / mpp
    out: list[Artefact] = []
    for kind in KINDS:
        for _ in range(counts.get(kind, 0)):
            for attempt in range(60):  # shorter each 10 tries, until one fits clear of the keep-out
                art = _one(rng, kind, size_px, um, nodes, 0.6 ** (attempt // 10))
                # Pen and chatter only tint or band what is under them; folds and tears would hide it.
                if kind not in ("fold", "tear") or _clear_of(art.polygon, keep_out, keep_out_cells, um(30)):
                    out.append(art)
                    break
    return tuple(out)


def _one(rng, kind: str, size_px: tuple[int, int], um, nodes: list[np.ndarray], scale: float) -> Artefact:
    w, h = size_px
    contour = nodes[int(rng.integers(len(nodes)))]
    lo, hi = contour.min(0), contour.max(0)
    inside = lo + rng.uniform(0.2, 0.8, 2) * (hi - lo)
    if kind in ("fold", "tear"):
        length = um(rng.uniform(300, 2500)) * scale
        path = geometry.random_walk(rng, inside, rng.uniform(0, 2 * np.pi), length, um(20), 0.08)
        width = um(rng.uniform(40, 200)) if kind == "fold" else um(rng.uniform(4, 15))
        return Artefact(kind, geometry.buffered_polyline(path, width), None, ())
    if kind == "bubble":
        r = um(rng.uniform(80, 500))
        return Artefact(kind, None, np.array([[inside[0], inside[1], r]]), ())
    if kind == "chatter":  # bands across the cutting direction over a strip of the section
        along = rng.uniform(0, np.pi)
        half = um(rng.uniform(1000, 3000)) * np.array([np.cos(along), np.sin(along)])
        strip = np.stack([inside - half, inside + half])
        band = geometry.buffered_polyline(strip, um(rng.uniform(500, 2500)))
        return Artefact(kind, band, None, (um(rng.uniform(15, 50)), rng.uniform(0.1, 0.3), along))
    if kind == "pen":  # a marker arc just outside a node, as pathologists circle what they mean
        centre = contour.mean(0)
        start = rng.uniform(0, 2 * np.pi)
        theta = start + np.linspace(0, rng.uniform(1.0, 3.0), 24)
        reach = np.abs(contour - centre).max() + um(rng.uniform(0, 400))
        radius = reach * (1 + np.cumsum(rng.normal(0, 0.01, 24)))
        path = centre + np.stack([np.cos(theta), np.sin(theta)], 1) * radius[:, None]
        colour = list(PEN_OD)[int(rng.integers(len(PEN_OD)))]
        strength = rng.uniform(0.25, 0.6)
        poly = geometry.buffered_polyline(path, um(rng.uniform(150, 500)))
        return Artefact(kind, poly, None, tuple(strength * np.asarray(PEN_OD[colour])))
    # dust: specks over the whole slide
    n = int(rng.integers(100, 600))
    pts = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n), rng.uniform(1.5, 7.0, n)], 1)
    return Artefact("dust", None, pts, DUST_OD)


def _mask(polygon: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
    lo, hi = polygon.min(0), polygon.max(0)
    if hi[0] < x0 or hi[1] < y0 or lo[0] > x0 + w or lo[1] > y0 + h:
        return None
    m = polygon_mask(polygon, x0, y0, w, h, mpp=1.0, base_mpp=1.0)
    return m if m.any() else None


def _disc_od(points: np.ndarray, x0: int, y0: int, w: int, h: int, soft_px: float) -> np.ndarray | None:
    """Sum of soft discs (x, y, radius rows) over the window, or None when none reaches it."""
    r = points[:, 2]
    near = (
        (points[:, 0] + r + soft_px >= x0)
        & (points[:, 0] - r - soft_px < x0 + w)
        & (points[:, 1] + r + soft_px >= y0)
        & (points[:, 1] - r - soft_px < y0 + h)
    )
    if not near.any():
        return None
    out = np.zeros((h, w), np.float32)
    xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :] + np.float32(0.5)
    ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None] + np.float32(0.5)
    for px, py, pr in points[near]:
        d = np.sqrt((xs - np.float32(px)) ** 2 + (ys - np.float32(py)) ** 2) - np.float32(pr)
        out += np.clip(np.float32(0.5) - d / np.float32(2 * soft_px), 0.0, 1.0)
    return out


def apply(
    artefacts: tuple[Artefact, ...], tissue: np.ndarray, H: np.ndarray, E: np.ndarray, x0: int, y0: int
) -> np.ndarray | None:
    """Put the artefacts into the window's concentrations (in place, tissue pixels only); returns the
    extra (h, w, 3) optical density of ink and dust, or None."""
    h, w = H.shape
    ink: np.ndarray | None = None

    def add_ink(weight: np.ndarray, od: tuple[float, ...]) -> None:
        nonlocal ink
        if ink is None:
            ink = np.zeros((h, w, 3), np.float32)
        ink += (weight * tissue)[..., None] * np.asarray(od, np.float32)

    for a in artefacts:
        if a.kind in ("fold", "tear"):
            m = _mask(a.polygon, x0, y0, w, h)
            if m is not None:
                gain = np.float32(FOLD_GAIN if a.kind == "fold" else TEAR_GAIN)
                H[m] *= gain
                E[m] *= gain
        elif a.kind == "chatter":
            m = _mask(a.polygon, x0, y0, w, h)
            if m is not None:
                period, amp, angle = a.value
                xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
                ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
                bands = np.float32(1.0) + np.float32(amp) * np.sin((xs + ys) * np.float32(2 * np.pi / period))
                H[m] *= bands[m]
                E[m] *= bands[m]
        elif a.kind == "bubble":  # a dark refraction rim; inside, the mountant is missing (paler)
            cx, cy, r = a.points[0]
            rim = _disc_od(np.array([[cx, cy, r]]), x0, y0, w, h, 3.0)
            if rim is not None:
                inner = _disc_od(np.array([[cx, cy, r - 8.0]]), x0, y0, w, h, 3.0)
                if inner is not None:
                    H *= np.float32(1.0) - np.float32(0.15) * inner
                    E *= np.float32(1.0) - np.float32(0.15) * inner
                    rim = np.clip(rim - inner, 0.0, 1.0)
                add_ink(rim, (0.45, 0.45, 0.4))
        elif a.kind == "pen":
            m = _mask(a.polygon, x0, y0, w, h)
            if m is not None:
                add_ink(m.astype(np.float32), a.value)
        else:
            specks = _disc_od(a.points, x0, y0, w, h, 1.0)
            if specks is not None:
                add_ink(np.clip(specks, 0.0, 1.0), a.value)
    return ink
