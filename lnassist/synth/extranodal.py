"""Tissue on the slide that is not a lymph node (the "scanned" look): skin, skeletal muscle, fat.

Real slides carry more than nodes: a sentinel-node excision may bring skin or muscle with it, and a
fat clearance has lobules with no node at all. A detector that has only ever seen nodes in fat calls
any purple-and-pink tissue a node (the shipped one outlines the dermis of a real skin excision). Each
piece here is a ground-truth negative for the detector: never an LN, never labelled.

``draw`` places pieces clear of every node from its own random stream and returns them as named
parts (painted in order by the layout, which owns the region labels). Base-level pixels throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnassist.synth import SynthError, geometry

KINDS = ("skin", "muscle", "fat")
KIND_P = (0.5, 0.3, 0.2)
PIECES_PER_SLIDE = 1.5  # expected pieces on a "scanned" slide (Poisson)
MIN_PIECE_UM = 300.0  # smallest piece radius
# Part names the layout maps to its regions, in painter's order within a piece.
PARTS = ("fat", "stroma", "vessel", "dermis", "epidermis", "keratin", "muscle")


@dataclass
class Piece:
    kind: str  # one of KINDS
    outline: np.ndarray  # (N, 2): everything the piece paints lies inside
    parts: list[tuple[str, np.ndarray]]  # (part name, polygon) in painter's order


def _vessels(
    rng: np.random.Generator, outline: np.ndarray, mpp: float, n: int
) -> list[tuple[str, np.ndarray]]:
    """Small vessels cut across: a fibrous wall around a lumen the renderer fills with red cells."""
    parts = []
    lo, hi = outline.min(0), outline.max(0)
    for _ in range(n):
        c = rng.uniform(lo, hi)
        lumen_px = rng.uniform(5, 30) / mpp
        reach = lumen_px * 1.6
        if not geometry.inside_with_margin(c[None], outline, reach)[0]:
            continue
        squash, ang = rng.uniform(0.45, 1.0), rng.uniform(0, np.pi)
        parts.append(("stroma", geometry.ellipse(c, reach, reach * squash, ang, 32)))
        parts.append(("vessel", geometry.ellipse(c, lumen_px, lumen_px * squash, ang, 32)))
    return parts


def _skin(rng: np.random.Generator, centre: np.ndarray, r_px: float, mpp: float) -> Piece:
    """Dermis (wavy collagen) under a thick epidermis with deep rete ridges, and hair follicles cut
    across and along. At 1.25x real skin is as much purple epithelium as pink dermis."""
    angle = rng.uniform(0, np.pi)
    aspect = rng.uniform(1.0, 4.0)  # skin ellipses are often long strips
    outline = geometry.blob(rng, centre, r_px * np.sqrt(aspect), r_px / np.sqrt(aspect), angle, 0.3)
    short_px = r_px / np.sqrt(aspect)
    parts: list[tuple[str, np.ndarray]] = [("dermis", outline)]
    parts += _vessels(rng, outline, mpp, int(rng.integers(2, 8)))
    # The epidermis follows a stretch of the outline, set a little inwards so its band stays inside.
    n = len(outline)
    span = int(n * rng.uniform(0.4, 0.85))
    start = int(rng.integers(n))
    arc = outline[(start + np.arange(span)) % n]
    thick_px = min(rng.uniform(80, 250) / mpp, 0.35 * short_px)
    band = geometry.inset_radial(centre, arc, thick_px * 0.55)
    parts.append(("epidermis", geometry.buffered_polyline(band, thick_px)))
    inward = centre - band
    inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-9)
    for i in range(2, len(band) - 2, int(rng.integers(3, 7))):  # rete ridges: pegs reaching inwards
        peg = band[i] + inward[i] * np.linspace(0, thick_px * rng.uniform(1.0, 2.5), 8)[:, None]
        parts.append(("epidermis", geometry.buffered_polyline(peg, thick_px * rng.uniform(0.4, 0.8))))
    # The surface: a thin layer of keratin over the epidermis.
    parts.append(("keratin", geometry.buffered_polyline(arc, thick_px * 0.2)))
    lo, hi = outline.min(0), outline.max(0)
    for _ in range(int(rng.integers(1, 4))):  # follicles cut along their length: epithelial cords
        start = rng.uniform(lo, hi)
        if not geometry.points_in_polygon(start[None], outline)[0]:
            continue
        path = geometry.random_walk(
            rng, start, rng.uniform(0, 2 * np.pi), r_px * rng.uniform(0.4, 1.0), 20 / mpp, 0.1
        )
        path = path[geometry.points_in_polygon(path, outline)]
        if len(path) >= 3:
            parts.append(("epidermis", geometry.buffered_polyline(path, rng.uniform(80, 200) / mpp)))
    for _ in range(int(rng.integers(2, 9))):  # follicles and adnexa cut across: an epithelial ring
        c = rng.uniform(lo, hi)
        rf = rng.uniform(60, 200) / mpp
        if not geometry.inside_with_margin(c[None], outline, rf * 1.1)[0]:
            continue
        ang = rng.uniform(0, np.pi)
        squash = rng.uniform(0.5, 1.0)
        parts.append(("epidermis", geometry.ellipse(c, rf, rf * squash, ang)))
        parts.append(("keratin", geometry.ellipse(c, rf * 0.45, rf * 0.45 * squash, ang)))
    return Piece("skin", outline, parts)


def _muscle(rng: np.random.Generator, centre: np.ndarray, r_px: float, mpp: float) -> Piece:
    """Skeletal muscle: eosinophilic fascicles split by thin fibrous septa (perimysium)."""
    angle = rng.uniform(0, np.pi)
    aspect = rng.uniform(1.2, 2.5)
    outline = geometry.blob(rng, centre, r_px * np.sqrt(aspect), r_px / np.sqrt(aspect), angle, 0.2)
    parts: list[tuple[str, np.ndarray]] = [("muscle", outline)]
    for _ in range(int(rng.integers(3, 9))):
        start = rng.uniform(outline.min(0), outline.max(0))
        path = geometry.random_walk(rng, start, angle + rng.normal(0, 0.3), 2.2 * r_px, 25 / mpp, 0.08)
        parts.append(("stroma", geometry.buffered_polyline(path, rng.uniform(6, 25) / mpp)))
    parts += _vessels(rng, outline, mpp, int(rng.integers(1, 5)))
    return Piece("muscle", outline, parts)


def _fat(rng: np.random.Generator, centre: np.ndarray, r_px: float, mpp: float) -> Piece:
    """A fat lobule with no node: adipocytes, fibrous septa and vessels."""
    outline = geometry.blob(rng, centre, r_px, r_px * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), 0.25)
    parts: list[tuple[str, np.ndarray]] = [("fat", outline)]
    for _ in range(int(rng.integers(1, 5))):
        start = rng.uniform(outline.min(0), outline.max(0))
        path = geometry.random_walk(rng, start, rng.uniform(0, 2 * np.pi), 1.5 * r_px, 25 / mpp, 0.15)
        parts.append(("stroma", geometry.buffered_polyline(path, rng.uniform(10, 50) / mpp)))
    parts += _vessels(rng, outline, mpp, int(rng.integers(2, 8)))
    return Piece("fat", outline, parts)


_MAKERS = {"skin": _skin, "muscle": _muscle, "fat": _fat}


def check_kinds(kinds) -> None:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SynthError(f"unknown extranodal tissue {bad}; choose from {KINDS}")


def draw(
    rng: np.random.Generator,
    kinds: tuple[str, ...] | None,
    size_px: tuple[int, int],
    mpp: float,
    keep_clear: list[tuple[np.ndarray, float]],
) -> list[Piece]:
    """Pieces for one slide: ``kinds`` (each once) or a Poisson number of drawn kinds.

    ``keep_clear``: (centre, radius) discs, base px, that no piece may reach (the nodes with their
    fat); a piece that finds no free place on the slide is left out."""
    if kinds is None:
        n = int(rng.poisson(PIECES_PER_SLIDE))
        kinds = tuple(rng.choice(KINDS, size=n, p=KIND_P))
    w, h = size_px
    pieces: list[Piece] = []
    for kind in kinds:
        r_px = min(float(np.exp(rng.uniform(np.log(600), np.log(2000)))) / mpp, 0.3 * min(w, h))
        cand = np.stack([rng.uniform(0, w, 400), rng.uniform(0, h, 400)], 1)
        taken = keep_clear + [
            (p.outline.mean(0), np.abs(p.outline - p.outline.mean(0)).max()) for p in pieces
        ]
        while True:  # smaller where the nodes leave little room, down to MIN_PIECE_UM
            reach = r_px * 1.75  # the long axis of a strip reaches sqrt(3) r
            clear = np.ones(len(cand), bool)
            for c, r in taken:
                clear &= np.hypot(*(cand - c).T) > r + reach
            ok = np.flatnonzero(clear)
            if len(ok) or r_px * 0.75 < MIN_PIECE_UM / mpp:
                break
            r_px *= 0.75
        if len(ok):
            pieces.append(_MAKERS[kind](rng, cand[int(rng.choice(ok))], r_px, mpp))
    return pieces
