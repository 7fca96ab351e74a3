"""Cell sprites: small pre-rendered H/E concentration patches for each cell type at 0.46 um/px.

Sizes follow the histology (lymphocyte nucleus ~6 um, tumour cells 10-20 um with vesicular nuclei and
nucleoli, histiocytes ~20 um with pale foamy cytoplasm). The "scanned" look has banks of its own for
centroblasts, foamy histiocytes with kidney-shaped nuclei and signet rings with a crescent nucleus;
the banks "vector" uses are untouched. Sprites are built once, deterministically, and are read-only
afterwards, so rendering threads share them safely. Oriented banks hold ``N_ANGLES`` rotations x
``per_angle`` shapes; ``variant = angle_bin * per_angle + shape``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

N_ANGLES = 16

# Bank ids (stored in layouts). "max" banks are composited with max(H) (dense small nuclei),
# "over" banks with alpha compositing in layout order (cells with cytoplasm).
LYMPH, GC_CELL, CRUSHED, SPINDLE = 0, 1, 2, 3
TUMOUR, COLUMNAR, DIFFUSE, HISTIOCYTE, ENDOTHELIAL, BENIGN = 4, 5, 6, 7, 8, 9
RED_CELL = 10  # eosin only: red blood cells of the "scanned" look (stamped into E, not H)
PLASMA = 11  # "scanned" medullary cords: stamped with max into both H and E
# "scanned" cell kinds: centroblasts are hashed (composited over the germinal centre's lymphocytes);
# foamy histiocytes and signet rings take the place of the layout's HISTIOCYTE and signet DIFFUSE cells.
CENTROBLAST, FOAMY_HISTIOCYTE, SIGNET = 12, 13, 14
TINGIBLE_BODY = 15  # germinal-centre macrophage holding apoptotic debris (the "starry sky")


@dataclass(frozen=True)
class Bank:
    """``h``, ``e``, ``alpha``: (V, K, K) float32; ``oriented`` banks are indexed by angle bin."""

    h: np.ndarray
    e: np.ndarray
    alpha: np.ndarray
    mode: str
    per_angle: int = 0

    @property
    def size(self) -> int:
        return int(self.h.shape[1])

    @property
    def n_variants(self) -> int:
        return int(self.h.shape[0])


def angle_variant(bank: Bank, angle_rad: np.ndarray, shape_index: np.ndarray) -> np.ndarray:
    """Variant index of an oriented bank for a direction (radians) and a shape choice."""
    angle_bin = np.round(np.asarray(angle_rad) / (2 * np.pi) * N_ANGLES).astype(np.int64) % N_ANGLES
    return angle_bin * bank.per_angle + np.asarray(shape_index) % bank.per_angle


def _coords(k: int) -> tuple[np.ndarray, np.ndarray]:
    c = (k - 1) / 2.0
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float64)
    return xx - c, yy - c


def _shape_distance(xx, yy, cx, cy, rx, ry, angle, harm) -> np.ndarray:
    """Approximate signed distance (px, negative inside) to a wobbly rotated ellipse."""
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(a * np.cos(n * theta + p) for n, a, p in harm)
    q = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble
    return (q - 1.0) * min(rx, ry)


def _harmonics(rng: np.random.Generator, amount: float) -> list[tuple[int, float, float]]:
    return [(n, rng.uniform(0, amount) / n**0.5, rng.uniform(0, 2 * np.pi)) for n in (2, 3, 4, 5)]


def _soft(d: np.ndarray, edge: float = 0.7) -> np.ndarray:
    return np.clip(0.5 - d / (2 * edge), 0.0, 1.0)


def _grain(rng: np.random.Generator, k: int, sigma: float) -> np.ndarray:
    g = cv2.GaussianBlur(rng.standard_normal((k, k)), (0, 0), sigma)
    return g / (g.std() + 1e-9)


def _chromatin_body(rng, d, rim_h, inner_h, grain_sigma, grain_amount=0.2):
    """(H, E, alpha) of a nucleus given its signed distance map: dark rim, granular interior."""
    a = _soft(d)
    rim = np.clip(1.0 + d / 1.8, 0.0, 1.0)  # 1 at the membrane, fading inward over ~2 px
    h = inner_h * (1.0 + grain_amount * _grain(rng, d.shape[0], grain_sigma)).clip(0.65, 1.6)
    h = np.maximum(h, rim * rim_h) * a
    return h, 0.04 * a, a


def _nucleus(rng, xx, yy, cx, cy, rx, ry, angle, harm, rim_h, inner_h, grain_sigma, nucleoli):
    """(H, E, alpha) of a nucleus: dark chromatin rim, given interior, optional nucleoli."""
    d = _shape_distance(xx, yy, cx, cy, rx, ry, angle, harm)
    h, e, a = _chromatin_body(rng, d, rim_h, inner_h, grain_sigma)
    for _ in range(nucleoli):
        r = rng.uniform(1.4, 2.6)
        ox, oy = rng.uniform(-0.4, 0.4) * rx, rng.uniform(-0.4, 0.4) * ry
        dn = np.hypot(xx - cx - ox, yy - cy - oy) - r
        an = _soft(dn) * a
        h = h * (1 - an) + 0.95 * an
        e = e * (1 - an) + 0.5 * an
    return h, e, a


def _over(dst, src):
    """Composite (h, e, a) ``src`` over ``dst``."""
    h0, e0, a0 = dst
    h1, e1, a1 = src
    return h0 * (1 - a1) + h1 * a1, e0 * (1 - a1) + e1 * a1, np.maximum(a0, a1)


def _lymph(rng, k, dark: bool):
    xx, yy = _coords(k)
    r = rng.uniform(5.4, 7.0) if dark else rng.uniform(6.5, 9.0)
    harm = _harmonics(rng, 0.06 if dark else 0.1)
    ang = rng.uniform(0, np.pi)
    ry = r * rng.uniform(0.85, 1.0)
    if dark:
        h, _, _ = _nucleus(
            rng, xx, yy, 0, 0, r, ry, ang, harm, rng.uniform(1.15, 1.4), rng.uniform(0.95, 1.25), 1.2, 0
        )
    else:  # germinal-centre blast: larger, vesicular, nucleoli
        h, _, _ = _nucleus(
            rng,
            xx,
            yy,
            0,
            0,
            r,
            ry,
            ang,
            harm,
            rng.uniform(0.85, 1.05),
            rng.uniform(0.45, 0.7),
            1.0,
            int(rng.integers(0, 3)),
        )
    return h


def _elongated(rng, k, angle, long_r, short_r, h_level, blur):
    xx, yy = _coords(k)
    d = _shape_distance(xx, yy, 0, 0, long_r, short_r, angle, _harmonics(rng, 0.08))
    h = _soft(d) * h_level * (1.0 + 0.15 * _grain(rng, k, 1.0)).clip(0.5, 1.5)
    if blur:
        h = cv2.GaussianBlur(h, (0, 0), blur)
    return h


def _tumour(rng, k):
    xx, yy = _coords(k)
    cell_r = rng.uniform(13, 21)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.12)
    )
    a = _soft(cyto_d, 0.8)
    membrane = np.clip(1.0 + cyto_d / 1.5, 0, 1) * a
    e = (rng.uniform(0.3, 0.5) * (1 + 0.18 * _grain(rng, k, 1.5)) + 0.15 * membrane) * a
    h = (rng.uniform(0.06, 0.12) + 0.05 * membrane) * a
    hyper = rng.random() < 0.25
    nr = rng.uniform(10, 15)
    nuc = _nucleus(
        rng,
        xx,
        yy,
        rng.uniform(-3, 3),
        rng.uniform(-3, 3),
        nr,
        nr * rng.uniform(0.7, 1.0),
        rng.uniform(0, np.pi),
        _harmonics(rng, rng.uniform(0.08, 0.18)),
        rng.uniform(0.95, 1.15),
        rng.uniform(0.75, 0.95) if hyper else rng.uniform(0.4, 0.6),
        1.3,
        int(rng.integers(1, 3)),
    )
    return _over((h, e, a), nuc)


def _columnar(rng, k, angle, benign: bool):
    """Columnar cell whose long axis points along ``angle`` (outward from a gland lumen)."""
    xx, yy = _coords(k)
    long_r, short_r = rng.uniform(15, 21), rng.uniform(7, 10)
    cyto_d = _shape_distance(xx, yy, 0, 0, long_r, short_r, angle, _harmonics(rng, 0.06))
    a = _soft(cyto_d, 0.8)
    membrane = np.clip(1.0 + cyto_d / 1.3, 0, 1) * a
    if benign:  # foveolar cell: pale mucinous apex (towards the lumen)
        apical = np.clip(-((xx * np.cos(angle) + yy * np.sin(angle)) / long_r), 0, 1)
        e = (0.32 - 0.22 * apical + 0.15 * membrane) * a
        h = (0.05 + 0.06 * apical + 0.04 * membrane) * a
        nr, inner, rim, offset = rng.uniform(5.5, 7), rng.uniform(0.75, 0.9), 0.95, 0.5
    else:
        e = (rng.uniform(0.4, 0.58) * (1 + 0.15 * _grain(rng, k, 1.5)) + 0.15 * membrane) * a
        h = (0.07 + 0.04 * membrane) * a
        nr, inner, rim, offset = rng.uniform(7, 11), rng.uniform(0.35, 0.75), 1.05, 0.3
    ox, oy = np.cos(angle) * long_r * offset, np.sin(angle) * long_r * offset
    nuc = _nucleus(
        rng,
        xx,
        yy,
        ox,
        oy,
        nr,
        nr * rng.uniform(0.45, 0.6),
        angle,
        _harmonics(rng, 0.04 if benign else 0.12),
        rim,
        inner,
        1.2,
        0 if benign else int(rng.integers(1, 3)),
    )
    return _over((h, e, a), nuc)


def _diffuse(rng, k):
    """Poorly cohesive tumour cell: signet-ring (mucin, eccentric dark nucleus) or histiocyte-like.

    Returns the sprite and whether it is a signet ring."""
    xx, yy = _coords(k)
    cell_r = rng.uniform(13, 20)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.8, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.08)
    )
    a = _soft(cyto_d, 1.0)
    membrane = np.clip(1.0 + cyto_d / 1.5, 0, 1) * a
    ang = rng.uniform(0, 2 * np.pi)
    signet = rng.random() < 0.5
    if signet:
        e = (rng.uniform(0.1, 0.18) + 0.2 * membrane) * a
        h = (rng.uniform(0.08, 0.14) + 0.08 * membrane) * a
        off = cell_r * 0.55
        nr = rng.uniform(8, 11)
        nuc = _nucleus(
            rng,
            xx,
            yy,
            np.cos(ang) * off,
            np.sin(ang) * off,
            nr,
            nr * rng.uniform(0.5, 0.7),
            ang + np.pi / 2,
            _harmonics(rng, 0.15),
            1.1,
            rng.uniform(0.8, 1.0),
            1.0,
            0,
        )
    else:  # histiocyte-like: moderate cytoplasm, vesicular nucleus, prominent nucleolus
        e = (rng.uniform(0.22, 0.36) * (1 + 0.2 * _grain(rng, k, 1.2)) + 0.1 * membrane) * a
        h = (rng.uniform(0.06, 0.1) + 0.04 * membrane) * a
        off = cell_r * rng.uniform(0.0, 0.3)
        nr = rng.uniform(9, 12.5)
        nuc = _nucleus(
            rng,
            xx,
            yy,
            np.cos(ang) * off,
            np.sin(ang) * off,
            nr,
            nr * rng.uniform(0.7, 0.95),
            rng.uniform(0, np.pi),
            _harmonics(rng, 0.14),
            1.1,
            rng.uniform(0.5, 0.7),
            1.2,
            1,
        )
    return _over((h, e, a), nuc), signet


def _histiocyte(rng, k):
    """Benign sinus histiocyte: large, pale foamy cytoplasm, bland oval/reniform nucleus."""
    xx, yy = _coords(k)
    cell_r = rng.uniform(15, 23)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.15)
    )
    a = _soft(cyto_d, 2.5) * 0.92
    foam = np.clip(_grain(rng, k, 0.9), -1.5, 1.5)
    e = (rng.uniform(0.13, 0.2) * (1 + 0.3 * foam)) * a
    h = (rng.uniform(0.04, 0.07) * (1 + 0.3 * foam)) * a
    ang = rng.uniform(0, 2 * np.pi)
    off = cell_r * rng.uniform(0.0, 0.35)
    nr = rng.uniform(9, 12)
    harm = _harmonics(rng, 0.05) + [(2, rng.uniform(0.0, 0.2), 0.0)]  # kidney-bean dent
    nuc = _nucleus(
        rng,
        xx,
        yy,
        np.cos(ang) * off,
        np.sin(ang) * off,
        nr,
        nr * rng.uniform(0.55, 0.75),
        rng.uniform(0, np.pi),
        harm,
        rng.uniform(0.7, 0.85),
        rng.uniform(0.38, 0.5),
        0.8,
        int(rng.random() < 0.3),
    )
    return _over((h, e, a), nuc)


def _endothelial(rng, k, angle):
    """Plump (cuboidal) HEV endothelial cell, long axis tangential to the lumen (radial = ``angle``)."""
    xx, yy = _coords(k)
    cyto_d = _shape_distance(xx, yy, 0, 0, 8, 11, angle, _harmonics(rng, 0.08))
    a = _soft(cyto_d, 1.0)
    e, h = 0.3 * a, 0.06 * a
    nr = rng.uniform(5.5, 7)
    nuc = _nucleus(
        rng,
        xx,
        yy,
        0,
        0,
        nr * 0.65,
        nr,
        angle,
        _harmonics(rng, 0.06),
        0.8,
        rng.uniform(0.4, 0.55),
        1.0,
        int(rng.random() < 0.4),
    )
    return _over((h, e, a), nuc)


def _red_cell(rng, k):
    """Red blood cell (~7.5 um disc): eosin only, paler in the biconcave centre; some seen edge-on."""
    xx, yy = _coords(k)
    r = rng.uniform(7.0, 8.5)
    ry = r * (rng.uniform(0.35, 0.55) if rng.random() < 0.2 else rng.uniform(0.8, 1.0))
    d = _shape_distance(xx, yy, 0, 0, r, ry, rng.uniform(0, np.pi), _harmonics(rng, 0.05))
    a = _soft(d, 0.9)
    centre = np.clip(1.0 + d / (0.45 * ry), 0.0, 1.0)  # 1 at the rim, 0 in the central pallor
    e = a * rng.uniform(0.75, 1.0) * (0.62 + 0.38 * centre)
    return np.zeros_like(e), e, a


def _plasma(rng, k):
    """Plasma cell: oval amphophilic cell, eccentric round nucleus with clock-face chromatin clumps
    along its membrane, and a pale Golgi zone (hof) beside the nucleus."""
    xx, yy = _coords(k)
    ang = rng.uniform(0, 2 * np.pi)
    long_r, short_r = rng.uniform(8.5, 10.5), rng.uniform(6.0, 7.5)
    d = _shape_distance(xx, yy, 0, 0, long_r, short_r, ang, _harmonics(rng, 0.06))
    a = _soft(d, 0.9)
    off = long_r - rng.uniform(6.0, 7.0)
    nx, ny = np.cos(ang) * off, np.sin(ang) * off
    hof = np.exp(-((xx + np.cos(ang) * 1.5) ** 2 + (yy + np.sin(ang) * 1.5) ** 2) / 8.0)
    e = a * rng.uniform(0.3, 0.42) * (1.0 - 0.45 * hof)
    h = a * rng.uniform(0.2, 0.28) * (1.0 - 0.5 * hof)
    nr = rng.uniform(5.0, 6.2)
    dn = np.hypot(xx - nx, yy - ny) - nr
    an = _soft(dn) * a
    chromatin = np.full_like(xx, 0.5)
    n_clumps = int(rng.integers(6, 10))
    for i, t in enumerate(np.linspace(0, 2 * np.pi, n_clumps, endpoint=False) + rng.uniform(0, 1)):
        rho = 0.0 if i == 0 else nr * 0.68
        cx, cy = nx + rho * np.cos(t), ny + rho * np.sin(t)
        chromatin = np.maximum(chromatin, 1.25 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 1.6))
    return _over((h, e, a), (chromatin * an, 0.05 * an, an))


def _centroblast(rng, k):
    """Germinal-centre blast: large round vesicular nucleus (~9 um), pale open chromatin under a thin
    dark membrane, one or two nucleoli against the membrane, a narrow rim of basophilic cytoplasm."""
    xx, yy = _coords(k)
    r = rng.uniform(8.5, 10.5)
    ang = rng.uniform(0, np.pi)
    cell_d = _shape_distance(xx, yy, 0, 0, r + rng.uniform(2.0, 3.5), r + 2.0, ang, _harmonics(rng, 0.06))
    ca = _soft(cell_d, 0.9)
    cell = (0.14 * ca, rng.uniform(0.14, 0.22) * ca, ca)
    d = _shape_distance(xx, yy, 0, 0, r, r * rng.uniform(0.85, 1.0), ang, _harmonics(rng, 0.05))
    # open chromatin: coarse pale clumps, so the interior is mostly light with a few darker flecks
    h, e, a = _chromatin_body(rng, d, rng.uniform(0.8, 0.95), rng.uniform(0.3, 0.4), 1.4, 0.5)
    for t in rng.uniform(0, 2 * np.pi, int(rng.integers(1, 3))):
        rho = r * rng.uniform(0.55, 0.7)
        an = _soft(np.hypot(xx - rho * np.cos(t), yy - rho * np.sin(t)) - rng.uniform(1.3, 1.9)) * a
        h = h * (1 - an) + 0.9 * an
        e = e * (1 - an) + 0.35 * an
    return _over(cell, (h, e, a))


def _tingible_body(rng, k):
    """Tingible-body macrophage: a large pale cell (~20 um) that clears the crowd of small nuclei
    around it, a pale oval nucleus off centre, and a few dense round fragments of engulfed apoptotic
    cells, each in a small clear halo."""
    xx, yy = _coords(k)
    cell_r = rng.uniform(17, 23)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.12)
    )
    a = _soft(cyto_d, 2.0) * 0.95
    h, e = rng.uniform(0.03, 0.05) * a, rng.uniform(0.12, 0.18) * a
    ang = rng.uniform(0, 2 * np.pi)
    off = cell_r * rng.uniform(0.3, 0.5)
    nx, ny, nr = np.cos(ang) * off, np.sin(ang) * off, rng.uniform(6, 8)
    d = _shape_distance(xx, yy, nx, ny, nr, nr * rng.uniform(0.6, 0.8), ang, _harmonics(rng, 0.05))
    nh, ne, na = _chromatin_body(rng, d, rng.uniform(0.5, 0.6), rng.uniform(0.25, 0.32), 0.8, 0.15)
    h, e, a = _over((h, e, a), (nh, ne, na))
    for _ in range(int(rng.integers(2, 7))):  # debris away from the nucleus
        t = ang + np.pi + rng.normal(0, 0.9)
        rho = cell_r * rng.uniform(0.1, 0.6)
        bx, by, br = rho * np.cos(t), rho * np.sin(t), rng.uniform(1.3, 3.0)
        dist = np.hypot(xx - bx, yy - by)
        halo = _soft(dist - br * 1.8, 0.8)
        h, e = h * (1 - 0.8 * halo), e * (1 - 0.6 * halo)
        body = _soft(dist - br, 0.6)
        h = h * (1 - body) + rng.uniform(1.0, 1.3) * body
        e = e * (1 - body) + 0.2 * body
    return h, e, a


def _kidney_nucleus(rng, xx, yy, cx, cy, r, angle):
    """Signed distance of a bean-shaped nucleus: an oval with a notch bitten out of one long side."""
    d = _shape_distance(xx, yy, cx, cy, r, r * rng.uniform(0.6, 0.75), angle, _harmonics(rng, 0.05))
    notch_r = r * rng.uniform(0.35, 0.6)
    side = angle + np.pi / 2
    nx, ny = cx + np.cos(side) * r * 0.75, cy + np.sin(side) * r * 0.75
    return np.maximum(d, notch_r - np.hypot(xx - nx, yy - ny))


def _foamy_histiocyte(rng, k):
    """Sinus histiocyte: large cell with pale, finely vacuolated (foamy) cytoplasm and indistinct
    borders; pale folded or kidney-shaped nucleus with fine chromatin, off centre."""
    xx, yy = _coords(k)
    cell_r = rng.uniform(15, 23)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.15)
    )
    a = _soft(cyto_d, 2.5) * 0.92
    # foam: many small vacuoles (~1-2 um), low contrast, with thin eosinophilic walls between them
    vac = np.zeros_like(xx)
    for _ in range(int(cell_r * 4)):
        vx, vy = rng.uniform(-cell_r, cell_r, 2)
        vac = np.maximum(vac, _soft(np.hypot(xx - vx, yy - vy) - rng.uniform(1.0, 2.2), 1.0))
    e = rng.uniform(0.16, 0.24) * (1.0 - 0.35 * vac) * a
    h = rng.uniform(0.04, 0.06) * (1.0 - 0.3 * vac) * a
    ang = rng.uniform(0, 2 * np.pi)
    off = cell_r * rng.uniform(0.2, 0.45)
    cx, cy, nr = np.cos(ang) * off, np.sin(ang) * off, rng.uniform(8, 11)
    d = _kidney_nucleus(rng, xx, yy, cx, cy, nr, ang + np.pi / 2)
    nh, ne, na = _chromatin_body(rng, d, rng.uniform(0.6, 0.75), rng.uniform(0.3, 0.4), 0.8, 0.15)
    if rng.random() < 0.4:  # a nuclear fold: a thin darker groove along the long axis
        along = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        across = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang) - rng.uniform(-1.5, 1.5)
        nh = np.maximum(nh, 0.55 * np.exp(-(across**2) / 0.8) * (np.abs(along) < 0.6 * nr) * na)
    return _over((h, e, a), (nh, ne, na))


def _signet_ring(rng, k):
    """Signet-ring cell: a clear mucin vacuole fills the cell and presses the dark nucleus into a
    crescent against the membrane; a thin rim of eosinophilic cytoplasm. Smaller than the DIFFUSE
    bodies, so neighbours drawn later in a crowded deposit rarely cover the peripheral crescent."""
    xx, yy = _coords(k)
    cell_r = rng.uniform(12, 17)
    cyto_d = _shape_distance(
        xx, yy, 0, 0, cell_r, cell_r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi), _harmonics(rng, 0.06)
    )
    a = _soft(cyto_d, 0.9)
    membrane = np.clip(1.0 + cyto_d / 1.5, 0, 1) * a
    ang = rng.uniform(0, 2 * np.pi)
    vac_r = cell_r * rng.uniform(0.62, 0.72)
    vx, vy = -np.cos(ang) * cell_r * 0.12, -np.sin(ang) * cell_r * 0.12
    vac_d = np.hypot(xx - vx, yy - vy) - vac_r
    vac = _soft(vac_d, 1.0)
    # mucin: nearly clear, a faint grey-blue wisp; cytoplasm around it pink
    wisp = np.clip(_grain(rng, k, 2.0), 0.0, 2.0)
    e = ((0.26 + 0.1 * membrane) * (1 - vac) + (0.03 + 0.02 * wisp) * vac) * a
    h = ((0.07 + 0.05 * membrane) * (1 - vac) + (0.04 + 0.02 * wisp) * vac) * a
    off = cell_r * rng.uniform(0.6, 0.7)
    nr = rng.uniform(7, 10)
    d = _shape_distance(
        xx,
        yy,
        np.cos(ang) * off,
        np.sin(ang) * off,
        nr,
        nr * rng.uniform(0.6, 0.75),
        ang + np.pi / 2,
        _harmonics(rng, 0.1),
    )
    d = np.maximum(d, -vac_d)  # moulded by the vacuole: a crescent
    nuc = _chromatin_body(rng, d, 1.15, rng.uniform(0.85, 1.05), 1.0)
    return _over((h, e, a), nuc)


def _stack(items, mode, per_angle=0) -> Bank:
    hs, es, als = [], [], []
    for it in items:
        if isinstance(it, tuple):
            h, e, a = it
        else:
            h, e, a = it, np.zeros_like(it), (it > 0.02).astype(np.float64)
        hs.append(h)
        es.append(e)
        als.append(a)
    f = lambda xs: np.ascontiguousarray(np.stack(xs).astype(np.float32))
    return Bank(f(hs), f(es), f(als), mode, per_angle)


def _oriented(rng, maker, per_angle):
    return [maker(rng, 2 * np.pi * b / N_ANGLES) for b in range(N_ANGLES) for _ in range(per_angle)]


def _build() -> dict[int, Bank]:
    rng = np.random.default_rng(20221015)
    built = {
        LYMPH: _stack([_lymph(rng, 17, True) for _ in range(48)], "max"),
        GC_CELL: _stack([_lymph(rng, 21, False) for _ in range(32)], "max"),
        CRUSHED: _stack(
            [
                _elongated(
                    rng,
                    31,
                    rng.normal(0.3, 0.25),
                    rng.uniform(8, 14),
                    rng.uniform(2.5, 4),
                    rng.uniform(1.0, 1.3),
                    1.3,
                )
                for _ in range(32)
            ],
            "max",
        ),
        SPINDLE: _stack(
            _oriented(
                rng,
                lambda r, a: _elongated(r, 31, a, r.uniform(8, 13), r.uniform(2, 3), r.uniform(0.75, 1.0), 0),
                2,
            ),
            "max",
            2,
        ),
        TUMOUR: _stack([_tumour(rng, 49) for _ in range(64)], "over"),
        COLUMNAR: _stack(_oriented(rng, lambda r, a: _columnar(r, 49, a, False), 4), "over", 4),
        DIFFUSE: [_diffuse(rng, 45) for _ in range(48)],
        HISTIOCYTE: _stack([_histiocyte(rng, 53) for _ in range(48)], "over"),
        ENDOTHELIAL: _stack(_oriented(rng, lambda r, a: _endothelial(r, 27, a), 2), "over", 2),
        BENIGN: _stack(_oriented(rng, lambda r, a: _columnar(r, 49, a, True), 3), "over", 3),
        # Later banks draw from their own streams: each is what it is whatever the banks before it.
        RED_CELL: _stack([_red_cell(np.random.default_rng([20221015, 10, i]), 19) for i in range(24)], "max"),
        PLASMA: _stack([_plasma(np.random.default_rng([20221015, 11, i]), 25) for i in range(32)], "max"),
        CENTROBLAST: _stack(
            [_centroblast(np.random.default_rng([20221015, 12, i]), 27) for i in range(32)], "max"
        ),
        FOAMY_HISTIOCYTE: _stack(
            [_foamy_histiocyte(np.random.default_rng([20221015, 13, i]), 53) for i in range(48)], "over"
        ),
        TINGIBLE_BODY: _stack(
            [_tingible_body(np.random.default_rng([20221015, 15, i]), 53) for i in range(32)], "over"
        ),
    }
    diffuse = built[DIFFUSE]
    built[DIFFUSE] = _stack([sprite for sprite, _ in diffuse], "over")
    # One signet ring for each signet DIFFUSE variant, the same variant index: the scanned look swaps
    # them one for one (scanned_cells), keeping the share of signet rings among diffuse cells.
    built[SIGNET] = _stack(
        [
            _signet_ring(np.random.default_rng([20221015, 14, i]), 45) if signet else sprite
            for i, (sprite, signet) in enumerate(diffuse)
        ],
        "over",
    )
    return built, np.array([signet for _, signet in diffuse])


_BANKS: dict[int, Bank] | None = None
_DIFFUSE_SIGNET: np.ndarray | None = None
_LOCK = threading.Lock()


def banks() -> dict[int, Bank]:
    """All sprite banks, built on first use (thread-safe)."""
    global _BANKS, _DIFFUSE_SIGNET
    if _BANKS is None:
        with _LOCK:
            if _BANKS is None:
                _BANKS, _DIFFUSE_SIGNET = _build()
    return _BANKS


def diffuse_signet() -> np.ndarray:
    """(n_variants,) bool: which DIFFUSE variants are signet rings (the others histiocyte-like)."""
    banks()
    return _DIFFUSE_SIGNET


def scanned_cells(bank: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Bank ids of the "scanned" look for a layout's cells: foamy histiocytes for HISTIOCYTE, signet
    rings for the signet DIFFUSE variants (same variant index); every other cell keeps its bank."""
    signet = diffuse_signet()
    out = np.where(bank == HISTIOCYTE, FOAMY_HISTIOCYTE, bank)
    is_signet = (bank == DIFFUSE) & signet[variant % len(signet)]
    return np.where(is_signet, SIGNET, out).astype(bank.dtype)


def max_radius() -> int:
    """Largest sprite half-size: how far outside a window a cell centre can still touch it."""
    return max(b.size for b in banks().values()) // 2 + 1
