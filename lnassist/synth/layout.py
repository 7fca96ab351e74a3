"""Slide layout: everything about a synthetic LN slide as vector data (the ground truth), from a seed.

A layout holds the lymph nodes (outline, capsule, sinuses, follicles, medulla), their tumour deposits
and mimics, the surrounding fat and fibrous tissue, tissue that is no node ("scanned": skin, muscle,
fat lobules; extranodal.py), and every explicitly placed cell (tumour cells,
histiocytes, HEV endothelium, floater epithelium). Coordinates are base-level pixels, x right, y down.
Rendering (render.py) only reads a layout; dense background nuclei (lymphocytes, fibroblasts) are not
stored but drawn from coordinate hashes at render time.

Cells, their spacing, the sprites, textures and scanner optics are sized in pixels of ``SCENE_MPP``
(20x). A slide at another resolution is that scene's section seen at its own pixel size: its layout is
built at ``SCENE_MPP`` (kept as ``scene``, which the renderer draws and resamples) and every coordinate
of the ground truth is scaled to the slide's base pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

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
    label_of,
)
from lnassist.synth import SynthError, artefacts, extranodal, geometry, optics, outline, sprites
from lnassist.synth.section import Section, draw_section
from lnassist.synth.stain import StainSite, get_site

MPP_20X = 0.46  # um/px of the paper's classifier input (20x)
SCENE_MPP = MPP_20X  # um/px the renderer draws in (cells, textures, optics): see the module docstring
MAGNIFICATION_20X = 20.0

# Region labels painted into the per-window label map (painter's order decides overlaps).
GLASS, FAT, STROMA, CAPSULE, SINUS, CORTEX, MANTLE, GERMINAL, MEDULLA = range(9)
TUMOUR, TUMOUR_DIFFUSE, HISTIO, CAUTERY, VESSEL, GLAND_LUMEN, FLOATER, HEV_LUMEN = range(9, 17)
DERMIS, EPIDERMIS, KERATIN, MUSCLE = range(17, 21)  # extranodal tissue ("scanned" only)
N_REGIONS = 21
_PART_REGION = {
    "fat": FAT,
    "stroma": STROMA,
    "vessel": VESSEL,
    "dermis": DERMIS,
    "epidermis": EPIDERMIS,
    "keratin": KERATIN,
    "muscle": MUSCLE,
}

TUMOUR_TYPES = ("intestinal", "diffuse", "mixed")
CELL_BODY_RADIUS_PX = 22.0  # largest tumour-cell body radius in the sprite banks (px)
DEFAULT_MIX = {NEGATIVE: 0.4, NEGATIVE_MIMIC: 0.15, ITC: 0.15, MICRO: 0.15, MACRO: 0.15}
MIN_NODE_DIAMETER_UM = {NEGATIVE: 1000.0, NEGATIVE_MIMIC: 1000.0, ITC: 1000.0, MICRO: 1400.0, MACRO: 2900.0}
MAX_NODE_DIAMETER_UM = 8000.0
SMALLEST_NODE_UM = 500.0  # only on canvases too small for 1 mm nodes
MAX_NODES_SCANNED = 12
NODE_ROOM = 1.2  # free radius kept around a node centre, in nominal radii: elongated nodes need room
NODE_ROOM_SCANNED = 1.45  # lobes reach further out
NODE_SEAM_UM = 3.0  # "scanned": nodes pressed together keep at least this much apart (a capsule seam)
BUCKET_PX = 256
# How slides look: "scanned" (the default) has chromatin and stroma texture, section thickness, the site's
# scanner optics and artefacts, and its own anatomy: lobulated, touching nodes (outline.py), 1-12 per
# slide, vessels in fat and node, extranodal tissue; "vector" is the original flat rendering, kept
# pixel for pixel because the first models (detector-cpu-v1, classifier-cpu-v1) and their cards use it.
LOOKS = ("vector", "scanned")
DEFAULT_LOOK = "scanned"


@dataclass
class Deposit:
    """One tumour focus. ``polygon`` encloses all its tumour cells (bodies included)."""

    kind: str  # cohesive | glandular | diffuse | cluster | single (ITCs: diffuse, cluster, single)
    polygon: np.ndarray
    cells: np.ndarray  # (M, 2) centres
    extent_px: float


@dataclass
class Mimic:
    """Something a model may mistake for tumour in a negative node (or normal look-alikes anywhere)."""

    kind: str  # sinus_histiocytes | histiocyte_aggregate | hev | cautery | floater
    polygon: np.ndarray | None
    cells: np.ndarray  # (M, 2) centres, possibly empty


@dataclass
class Node:
    node_id: int
    category: str
    centre: np.ndarray
    contour: np.ndarray  # outer outline (capsule included), (N, 2)
    deposits: list[Deposit] = field(default_factory=list)
    mimics: list[Mimic] = field(default_factory=list)

    @property
    def label(self) -> int:
        return label_of(self.category)

    @property
    def largest_extent_px(self) -> float:
        return max((d.extent_px for d in self.deposits), default=0.0)


@dataclass
class PaintOp:
    region: int
    polygon: np.ndarray  # (N, 2) float64 vertices (base px)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (base px, inclusive-exclusive)


@dataclass
class CellTable:
    """Explicit cells in painter's order, bucketed for window queries."""

    xy: np.ndarray  # (N, 2) float64
    bank: np.ndarray  # (N,) uint8 sprite bank id
    variant: np.ndarray  # (N,) int32
    order: np.ndarray  # indices sorted by bucket
    bucket_sorted: np.ndarray  # bucket id per sorted entry
    n_bx: int

    @classmethod
    def build(cls, xy: np.ndarray, bank: np.ndarray, variant: np.ndarray, width_px: int) -> CellTable:
        n_bx = width_px // BUCKET_PX + 2
        bid = cls._bucket_ids(xy, n_bx)
        order = np.argsort(bid, kind="stable")
        return cls(xy, bank.astype(np.uint8), variant.astype(np.int32), order, bid[order], n_bx)

    @staticmethod
    def _bucket_ids(xy: np.ndarray, n_bx: int) -> np.ndarray:
        b = np.floor_divide(xy, BUCKET_PX).astype(np.int64) + 1  # +1: centres may lie just off-canvas
        return np.clip(b[:, 1], 0, None) * n_bx + np.clip(b[:, 0], 0, n_bx - 1)

    def query(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices (ascending = painter's order) of cells with centres in [x0, x1) x [y0, y1)."""
        if len(self.xy) == 0:
            return np.zeros(0, dtype=np.intp)
        bx0 = int(np.clip(np.floor(x0 / BUCKET_PX) + 1, 0, self.n_bx - 1))
        bx1 = int(np.clip(np.floor(x1 / BUCKET_PX) + 1, 0, self.n_bx - 1))
        by0 = max(int(np.floor(y0 / BUCKET_PX)) + 1, 0)
        by1 = max(int(np.floor(y1 / BUCKET_PX)) + 1, 0)
        parts = []
        for by in range(by0, by1 + 1):
            lo = np.searchsorted(self.bucket_sorted, by * self.n_bx + bx0, "left")
            hi = np.searchsorted(self.bucket_sorted, by * self.n_bx + bx1, "right")
            parts.append(self.order[lo:hi])
        idx = np.sort(np.concatenate(parts))
        p = self.xy[idx]
        keep = (p[:, 0] >= x0) & (p[:, 0] < x1) & (p[:, 1] >= y0) & (p[:, 1] < y1)
        return idx[keep]


@dataclass
class SlideLayout:
    width_px: int
    height_px: int
    mpp: float
    seed: int
    site: StainSite
    tumour_type: str
    look: str
    scanner: optics.Scanner
    section: Section
    artefacts: tuple[artefacts.Artefact, ...]
    nodes: list[Node]
    floaters: list[Mimic]  # fragments on the glass, outside every node
    extranodal: list[extranodal.Piece]  # skin, muscle, fat lobules: tissue that is no node
    paint: list[PaintOp]
    paint_bbox: np.ndarray  # (len(paint), 4)
    cells: CellTable
    # At SCENE_MPP: None (the layout is its own scene). Otherwise the same slide built at SCENE_MPP,
    # of which this layout is the scaled copy; rendering draws the scene and resamples it.
    scene: SlideLayout | None = None

    @property
    def slide_label(self) -> int:
        return int(any(n.label for n in self.nodes))

    def paint_ops_in(self, x0: int, y0: int, x1: int, y1: int) -> list[PaintOp]:
        if not self.paint:
            return []
        b = self.paint_bbox
        hit = (b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)
        return [self.paint[i] for i in np.flatnonzero(hit)]


@dataclass(frozen=True)
class LayoutConfig:
    """What to generate. ``categories`` fixes the nodes' categories; otherwise they are drawn from ``mix``."""

    width_px: int
    height_px: int
    seed: int
    site: str = "A"
    mpp: float = MPP_20X
    categories: tuple[str, ...] | None = None
    mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())
    n_nodes: int | None = None
    stain_jitter: float = 1.0
    tumour_type: str | None = None
    look: str = DEFAULT_LOOK
    # "scanned" only: artefact kinds to put on the slide (each once); None: drawn at the site's rates.
    artefacts: tuple[str, ...] | None = None
    # "scanned" only: extranodal tissue kinds to add (each once, where there is room); None: drawn.
    extranodal: tuple[str, ...] | None = None
    # Nodes without a micro- or macrometastasis are drawn from this diameter up instead of 1 mm (the
    # smallest nodes a dissection finds, with glass and fat around them); None: the size rules.
    smallest_node_um: float | None = None

    def validate(self) -> None:
        if not (isinstance(self.width_px, int | np.integer) and isinstance(self.height_px, int | np.integer)):
            raise SynthError("width_px and height_px must be integers")
        if self.width_px < 2000 or self.height_px < 2000:
            raise SynthError(f"slide must be at least 2000 x 2000 px, got {self.width_px} x {self.height_px}")
        if self.width_px > 200_000 or self.height_px > 200_000:
            raise SynthError(f"slide larger than 200,000 px per side: {self.width_px} x {self.height_px}")
        if not self.mpp > 0:
            raise SynthError(f"mpp must be positive, got {self.mpp}")
        if self.seed < 0:
            raise SynthError(f"seed must be >= 0, got {self.seed}")
        get_site(self.site)
        if self.look not in LOOKS:
            raise SynthError(f"look must be one of {LOOKS}, got {self.look!r}")
        if self.artefacts is not None:
            artefacts.check_kinds(self.artefacts)
        if self.extranodal is not None:
            extranodal.check_kinds(self.extranodal)
        if self.categories is not None:
            bad = [c for c in self.categories if c not in CATEGORIES]
            if bad or not self.categories:
                raise SynthError(
                    f"categories must be a non-empty list of {CATEGORIES}, got {self.categories}"
                )
        mix = dict(self.mix)
        if (
            any(k not in CATEGORIES for k in mix)
            or any(v < 0 for v in mix.values())
            or sum(mix.values()) <= 0
        ):
            raise SynthError(f"category mix needs non-negative weights over {CATEGORIES}, got {mix}")
        small = self.smallest_node_um
        if small is not None and not SMALLEST_NODE_UM <= small <= MIN_NODE_DIAMETER_UM[NEGATIVE]:
            raise SynthError(
                f"smallest_node_um must be within {SMALLEST_NODE_UM:.0f}.."
                f"{MIN_NODE_DIAMETER_UM[NEGATIVE]:.0f}, got {small}"
            )
        if self.n_nodes is not None and not 1 <= self.n_nodes <= 30:
            raise SynthError(f"n_nodes must be within 1..30, got {self.n_nodes}")
        if self.tumour_type is not None and self.tumour_type not in TUMOUR_TYPES:
            raise SynthError(f"tumour_type must be one of {TUMOUR_TYPES}, got {self.tumour_type!r}")


class _Builder:
    """Accumulates paint ops and cells while nodes are generated (in painter's order)."""

    def __init__(self) -> None:
        self.background: list[tuple[int, np.ndarray]] = []
        self.foreground: list[tuple[int, np.ndarray]] = []
        self.cell_xy: list[np.ndarray] = []
        self.cell_bank: list[np.ndarray] = []
        self.cell_variant: list[np.ndarray] = []

    def paint(self, region: int, polygon: np.ndarray, background: bool = False) -> None:
        (self.background if background else self.foreground).append((region, polygon))

    def cells(self, xy: np.ndarray, bank: int, variant: np.ndarray) -> None:
        xy = np.asarray(xy, float).reshape(-1, 2)
        if len(xy):
            self.cell_xy.append(xy)
            self.cell_bank.append(np.full(len(xy), bank, np.uint8))
            self.cell_variant.append(np.asarray(variant, np.int64).reshape(-1))

    def ops(self) -> list[PaintOp]:
        return [_paint_op(region, poly) for region, poly in self.background + self.foreground]


def _paint_bbox(ops: list[PaintOp]) -> np.ndarray:
    return np.array([op.bbox for op in ops], dtype=np.int64).reshape(-1, 4)


def _paint_op(region: int, polygon: np.ndarray) -> PaintOp:
    x0, y0 = np.floor(polygon.min(0)).astype(int) - 1
    x1, y1 = np.ceil(polygon.max(0)).astype(int) + 2
    return PaintOp(region, np.asarray(polygon, np.float64), (int(x0), int(y0), int(x1), int(y1)))


def _um(mpp: float, um: float) -> float:
    return um / mpp


def _random_variants(rng: np.random.Generator, bank_id: int, n: int) -> np.ndarray:
    return rng.integers(0, sprites.banks()[bank_id].n_variants, n)


def _draw_categories(cfg: LayoutConfig, rng: np.random.Generator) -> list[str]:
    if cfg.categories is not None:
        return list(cfg.categories)
    area_mm2 = cfg.width_px * cfg.height_px * (cfg.mpp / 1000.0) ** 2
    if cfg.look == "scanned":  # from a single node to a dozen small ones of a fat clearance
        max_nodes = int(np.clip(area_mm2 / 7.0, 1, MAX_NODES_SCANNED))
        n = cfg.n_nodes or int(rng.integers(1, max_nodes + 1))
    else:
        max_nodes = int(np.clip(area_mm2 / 6.0, 1, 10))
        n = cfg.n_nodes or int(rng.integers(min(3, max_nodes), max_nodes + 1))
    # Categories whose nodes cannot fit this canvas (macrometastases need >= 2.9 mm nodes) leave the mix.
    max_d_um = min(MAX_NODE_DIAMETER_UM, 0.62 * min(cfg.width_px, cfg.height_px) * cfg.mpp)
    mix = [(k, v) for k, v in cfg.mix if k not in (MICRO, MACRO) or MIN_NODE_DIAMETER_UM[k] <= max_d_um]
    if not mix or sum(v for _, v in mix) <= 0:
        raise SynthError(
            f"no category of the mix {dict(cfg.mix)} fits a {cfg.width_px} x {cfg.height_px} slide"
        )
    names = [k for k, _ in mix]
    p = np.array([v for _, v in mix], float)
    return list(rng.choice(names, size=n, p=p / p.sum()))


class _NodeFrame:
    """A node's geometry used while filling it: star-shaped radii around the centre."""

    def __init__(
        self,
        rng: np.random.Generator,
        centre: np.ndarray,
        diam_px: float,
        mpp: float,
        neighbours: list[np.ndarray] | None = None,
    ):
        """``neighbours``: outlines of the nodes already built, for the "scanned" look's lobulated
        outlines moulded against them; None keeps the "vector" look's near-ellipse."""
        self.centre = centre
        self.theta = np.linspace(0, 2 * np.pi, geometry.N_VERTICES, endpoint=False)
        self.scanned = neighbours is not None
        r = diam_px / 2.0
        if self.scanned:
            self.hilum = rng.uniform(0, 2 * np.pi)
            radii = outline.lobulated_radii(rng, self.theta, r, self.hilum, mpp, NODE_ROOM_SCANNED * r)
            self.radii = outline.moulded_radii(centre, self.theta, radii, neighbours, _um(mpp, NODE_SEAM_UM))
        else:
            aspect = rng.uniform(1.0, 1.4)
            angle = rng.uniform(0, np.pi)
            radii = geometry.blob_radii(
                rng, self.theta, r * np.sqrt(aspect), r / np.sqrt(aspect), angle, rng.uniform(0.03, 0.08)
            )
            self.hilum = rng.uniform(0, 2 * np.pi)
            dent = np.exp(-0.5 * (np.angle(np.exp(1j * (self.theta - self.hilum))) / 0.25) ** 2)
            self.radii = radii * (1.0 - rng.uniform(0.06, 0.15) * dent)
        self.contour = geometry.polygon_from_radii(centre, self.theta, self.radii)
        self.capsule_px = _um(mpp, rng.uniform(12, 30))
        self.scs_px = _um(mpp, rng.uniform(15, 35))
        # A moulded side can come close to the centre: keep the inner outlines on their own side of it.
        floor = 0.05 * self.radii if self.scanned else -np.inf
        self.inner = geometry.polygon_from_radii(
            centre, self.theta, np.maximum(self.radii - self.capsule_px, floor)
        )
        self.cortex = geometry.polygon_from_radii(
            centre, self.theta, np.maximum(self.radii - self.capsule_px - self.scs_px, floor)
        )
        self.mean_r = float(self.radii.mean())
        self.medulla: np.ndarray | None = None
        self.medullary_sinuses: list[np.ndarray] = []  # polyline centres

    def radius_at(self, ang: np.ndarray) -> np.ndarray:
        return np.interp(
            np.mod(ang, 2 * np.pi), np.append(self.theta, 2 * np.pi), np.append(self.radii, self.radii[0])
        )

    def point(self, ang: np.ndarray, rho: np.ndarray) -> np.ndarray:
        ang, rho = np.asarray(ang, float), np.asarray(rho, float)
        return np.stack([self.centre[0] + rho * np.cos(ang), self.centre[1] + rho * np.sin(ang)], axis=-1)

    def sinus_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Points in the subcapsular sinus (mostly) or along medullary sinuses."""
        out = np.empty((n, 2))
        for i in range(n):
            if self.medullary_sinuses and rng.random() < 0.3:
                path = self.medullary_sinuses[int(rng.integers(len(self.medullary_sinuses)))]
                out[i] = path[int(rng.integers(len(path)))] + rng.normal(0, 4, 2)
            else:
                a = rng.uniform(0, 2 * np.pi)
                out[i] = self.point(
                    a, self.radius_at(a) - self.capsule_px - rng.uniform(0.25, 0.75) * self.scs_px
                )
        return out


def _anatomy(b: _Builder, rng: np.random.Generator, f: _NodeFrame, mpp: float) -> list[np.ndarray]:
    """Fat piece, fibrous tissue and the node's normal compartments; returns follicle polygons."""
    # Perinodal fat lobule and fibrous septa/vessels in it (background ops: under every node).
    rim = _um(mpp, rng.uniform(150, 1200))
    fat = geometry.polygon_from_radii(
        f.centre,
        f.theta,
        (f.radii + rim)
        * (
            1
            + 0.12 * np.cos(3 * f.theta + rng.uniform(0, 6))
            + 0.06 * np.cos(5 * f.theta + rng.uniform(0, 6))
        ),
    )
    b.paint(FAT, fat, background=True)
    # "scanned": the fibrous rim is thinner, and often absent, so adipocytes meet the capsule.
    if not f.scanned or rng.random() < 0.6:
        rim_um = rng.uniform(3, 30) if f.scanned else rng.uniform(10, 40)
        b.paint(
            STROMA,
            geometry.polygon_from_radii(f.centre, f.theta, f.radii + _um(mpp, rim_um)),
            background=True,
        )
    for _ in range(int(rng.integers(2, 6))):
        a = rng.uniform(0, 2 * np.pi)
        start = f.point(a, f.radius_at(a))
        path = geometry.random_walk(
            rng, start, a + rng.normal(0, 0.4), rim * rng.uniform(0.6, 1.4), _um(mpp, 25), 0.15
        )
        b.paint(STROMA, geometry.buffered_polyline(path, _um(mpp, rng.uniform(15, 60))), background=True)
    for _ in range(int(rng.integers(1, 4))):  # hilar vessels: fibrous wall, red-cell-filled lumen
        a = f.hilum + rng.normal(0, 0.3)
        c = f.point(a, f.radius_at(a) + min(rim * 0.5, _um(mpp, 300)) * rng.uniform(0.3, 1.0))
        rv = _um(mpp, rng.uniform(25, 90))
        ang = rng.uniform(0, np.pi)
        b.paint(STROMA, geometry.ellipse(c, rv * 1.35, rv * 0.9, ang), background=True)
        b.paint(VESSEL, geometry.ellipse(c, rv, rv * 0.6, ang), background=True)
    if f.scanned:
        _fat_vessels(b, rng, f, rim, mpp)

    # Node compartments.
    b.paint(CAPSULE, f.contour)
    b.paint(SINUS, f.inner)
    b.paint(CORTEX, f.cortex)
    mc = f.point(f.hilum, f.mean_r * 0.35)
    for _ in range(8):
        med = geometry.blob(rng, mc, f.mean_r * 0.42, f.mean_r * 0.3, f.hilum + np.pi / 2, 0.15)
        if geometry.polygon_inside(med, f.cortex):
            f.medulla = med
            break
        mc = (mc + f.centre) / 2
    if f.medulla is not None:
        b.paint(MEDULLA, f.medulla)
        for _ in range(int(rng.integers(3, 8))):
            start = mc + rng.normal(0, f.mean_r * 0.1, 2)
            path = geometry.random_walk(
                rng, start, rng.uniform(0, 2 * np.pi), f.mean_r * rng.uniform(0.2, 0.45), _um(mpp, 20), 0.25
            )
            path = path[geometry.points_in_polygon(path, f.medulla)]
            if len(path) >= 3:
                f.medullary_sinuses.append(path)
                b.paint(SINUS, geometry.buffered_polyline(path, _um(mpp, rng.uniform(15, 35))))
    for _ in range(int(rng.integers(2, 6))):  # trabecular sinuses from the SCS inwards
        a = rng.uniform(0, 2 * np.pi)
        start = f.point(a, f.radius_at(a) - f.capsule_px - f.scs_px * 0.5)
        path = geometry.random_walk(
            rng, start, a + np.pi + rng.normal(0, 0.3), f.mean_r * rng.uniform(0.15, 0.35), _um(mpp, 20), 0.12
        )
        path = path[geometry.points_in_polygon(path, f.inner)]
        if len(path) >= 3:
            b.paint(SINUS, geometry.buffered_polyline(path, _um(mpp, rng.uniform(8, 18))))

    follicles = []
    fd_px = min(_um(mpp, rng.uniform(250, 550)), f.mean_r * 0.45)
    n_fol = int(2 * np.pi * f.mean_r / (fd_px * 1.5))
    for a in np.linspace(0, 2 * np.pi, max(n_fol, 1), endpoint=False) + rng.uniform(0, 2 * np.pi):
        if abs(np.angle(np.exp(1j * (a - f.hilum)))) < 0.9 or rng.random() < 0.2:
            continue
        d = fd_px * rng.uniform(0.75, 1.15)
        rho = f.radius_at(a) - f.capsule_px - f.scs_px - d * 0.5 * 1.1
        c = f.point(a, rho)
        poly = geometry.ellipse(c, d / 2, d / 2 * rng.uniform(0.7, 1.0), a + np.pi / 2)
        if not geometry.polygon_inside(poly, f.cortex):
            continue
        follicles.append(poly)
        b.paint(MANTLE, poly)
        if rng.random() < 0.7:
            gc = f.point(a, rho + d * 0.05)
            b.paint(
                GERMINAL, geometry.ellipse(gc, d * 0.33, d * 0.33 * rng.uniform(0.75, 1.0), a + np.pi / 2)
            )
    if f.scanned:
        _node_vessels(b, rng, f, follicles, mpp)
    return follicles


def _vessel(b: _Builder, rng, centre: np.ndarray, lumen_px: float, wall_px: float, background: bool) -> None:
    """A vessel cut across: a fibrous wall around a lumen (the renderer fills lumina with red cells)."""
    squash, ang = rng.uniform(0.45, 1.0), rng.uniform(0, np.pi)
    b.paint(
        STROMA,
        geometry.ellipse(centre, lumen_px + wall_px, (lumen_px + wall_px) * squash, ang, 32),
        background,
    )
    b.paint(VESSEL, geometry.ellipse(centre, lumen_px, lumen_px * squash, ang, 32), background)


def _fat_vessels(b: _Builder, rng, f: _NodeFrame, rim_px: float, mpp: float) -> None:
    """Arterioles, venules and capillaries scattered through the perinodal fat."""
    for _ in range(int(rng.integers(3, 12))):
        a = rng.uniform(0, 2 * np.pi)
        c = f.point(a, f.radius_at(a) + rim_px * rng.uniform(0.1, 0.8))
        lumen_px = _um(mpp, float(np.exp(rng.uniform(np.log(4), np.log(45)))))
        # Arterioles have a muscular wall about as thick as their lumen; venules a thin one.
        wall_px = lumen_px * (rng.uniform(0.5, 0.9) if rng.random() < 0.35 else rng.uniform(0.12, 0.25))
        _vessel(b, rng, c, lumen_px, wall_px + _um(mpp, 1.5), background=True)


def _node_vessels(b: _Builder, rng, f: _NodeFrame, follicles: list[np.ndarray], mpp: float) -> None:
    """Small blood vessels of the paracortex and medulla, never inside a follicle."""
    for _ in range(int(rng.integers(3, 12))):
        a = rng.uniform(0, 2 * np.pi)
        c = f.point(a, f.radius_at(a) * rng.uniform(0.2, 0.75))
        lumen_px = _um(mpp, rng.uniform(4, 14))
        wall_px = _um(mpp, rng.uniform(2, 5))
        reach = lumen_px + wall_px
        if not geometry.inside_with_margin(c[None], f.cortex, reach + 2)[0]:
            continue
        if any(
            geometry.points_in_polygon(c, fol)[0] or geometry.distance_to_boundary(c, fol)[0] < reach
            for fol in follicles
        ):
            continue
        _vessel(b, rng, c, lumen_px, wall_px, background=False)


def _sinus_histiocytes(b: _Builder, rng, f: _NodeFrame) -> Mimic:
    pts = f.sinus_points(rng, int(rng.integers(4, 20)))
    b.cells(pts, sprites.HISTIOCYTE, _random_variants(rng, sprites.HISTIOCYTE, len(pts)))
    return Mimic("sinus_histiocytes", None, pts)


def _hevs(b: _Builder, rng, f: _NodeFrame, mpp: float, n: int) -> list[Mimic]:
    out = []
    bank = sprites.banks()[sprites.ENDOTHELIAL]
    for _ in range(n):
        a = rng.uniform(0, 2 * np.pi)
        c = f.point(a, f.radius_at(a) * rng.uniform(0.35, 0.7))
        lumen = _um(mpp, rng.uniform(3, 7))
        ring = lumen + 7.0
        k = int(rng.integers(6, 10))
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
        cells = np.stack([c[0] + ring * np.cos(ang), c[1] + ring * np.sin(ang)], axis=1)
        poly = geometry.ellipse(c, lumen, lumen * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), 24)
        b.paint(HEV_LUMEN, poly)
        b.cells(cells, sprites.ENDOTHELIAL, sprites.angle_variant(bank, ang, rng.integers(0, 8, k)))
        out.append(Mimic("hev", geometry.ellipse(c, ring + 12, ring + 12, 0, 24), cells))
    return out


def _jitter_grid(rng, polygon: np.ndarray, spacing: float, margin: float) -> np.ndarray:
    lo, hi = polygon.min(0), polygon.max(0)
    xs = np.arange(lo[0], hi[0] + spacing, spacing)
    ys = np.arange(lo[1], hi[1] + spacing, spacing)
    g = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    g = g + rng.uniform(-0.35, 0.35, g.shape) * spacing
    return g[geometry.inside_with_margin(g, polygon, margin)]


def _glands(
    b: _Builder,
    rng,
    polygon: np.ndarray,
    mpp: float,
    columnar_bank: int,
    fill_bank: int | None,
    fill_p: float,
) -> np.ndarray:
    """Gland-like rings of columnar cells around lumina inside ``polygon``; returns all cell centres."""
    bank = sprites.banks()[columnar_bank]
    lumen_r = _um(mpp, rng.uniform(8, 22))
    outer = lumen_r * 1.4 + 15.0 + CELL_BODY_RADIUS_PX + 1.0  # largest lumen + cell ring + cell body
    centres = _jitter_grid(rng, polygon, outer * 2.3, outer)
    all_cells = []
    for c in centres:
        lr = lumen_r * rng.uniform(0.6, 1.4)
        sq = rng.uniform(0.6, 1.0)
        ang0 = rng.uniform(0, np.pi)
        b.paint(GLAND_LUMEN, geometry.ellipse(c, lr, lr * sq, ang0, 32))
        ring = lr + 15.0
        k = max(int(2 * np.pi * ring / 16.0), 6)
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
        u, v = ring * np.cos(ang), ring * (sq + (1 - sq) * 0.5) * np.sin(ang)
        cells = np.stack(
            [c[0] + u * np.cos(ang0) - v * np.sin(ang0), c[1] + u * np.sin(ang0) + v * np.cos(ang0)], 1
        )
        b.cells(cells, columnar_bank, sprites.angle_variant(bank, ang + ang0, rng.integers(0, 16, k)))
        all_cells.append(cells)
    if fill_bank is not None:
        fill = _jitter_grid(rng, polygon, 26.0, CELL_BODY_RADIUS_PX)
        if len(centres):
            d = np.sqrt(((fill[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)
            fill = fill[d > outer + 6]
        fill = fill[rng.random(len(fill)) < fill_p]
        b.cells(fill, fill_bank, _random_variants(rng, fill_bank, len(fill)))
        all_cells.append(fill)
    return np.concatenate(all_cells) if all_cells else np.zeros((0, 2))


def _deposit_kind(rng, tumour_type: str) -> str:
    if tumour_type == "intestinal":
        return str(rng.choice(["glandular", "cohesive"], p=[0.6, 0.4]))
    if tumour_type == "diffuse":
        return "diffuse"
    return str(rng.choice(["glandular", "cohesive", "diffuse"]))


def _large_deposit(
    b: _Builder,
    rng,
    f: _NodeFrame,
    mpp: float,
    lo_um: float,
    hi_um: float,
    tumour_type: str,
    subcapsular: bool,
) -> Deposit:
    """A micro- or macrometastasis with extent in [lo_um, hi_um), fully inside the node."""
    kind = _deposit_kind(rng, tumour_type)
    target = _um(mpp, rng.uniform(lo_um, hi_um))
    for _attempt in range(200):
        shape = geometry.blob(rng, (0.0, 0.0), 1.0, rng.uniform(0.55, 1.0), rng.uniform(0, np.pi), 0.12)
        shape *= target / geometry.extent(shape)
        half = target / 2
        a = rng.uniform(0, 2 * np.pi)
        room = f.radius_at(a) - f.capsule_px - half
        if room <= 0:
            target = max(target * 0.95, _um(mpp, lo_um) * 1.001)
            continue
        rho = room * (rng.uniform(0.85, 1.0) if subcapsular else rng.uniform(0.0, 1.0))
        poly = shape + f.point(a, rho)
        if geometry.polygon_inside(poly, f.inner, 2.0):
            break
    else:
        raise SynthError(
            f"could not fit a {lo_um:.0f}-{hi_um:.0f} um deposit in node of radius {f.mean_r * mpp:.0f} um"
        )
    region = TUMOUR_DIFFUSE if kind == "diffuse" else TUMOUR
    b.paint(region, poly)
    if kind == "glandular":
        cells = _glands(b, rng, poly, mpp, sprites.COLUMNAR, sprites.TUMOUR, 0.35)
    elif kind == "cohesive":
        cells = _jitter_grid(rng, poly, 32.0, CELL_BODY_RADIUS_PX)
        b.cells(cells, sprites.TUMOUR, _random_variants(rng, sprites.TUMOUR, len(cells)))
    else:
        cells = _jitter_grid(rng, poly, 30.0, CELL_BODY_RADIUS_PX)
        cells = cells[rng.random(len(cells)) < 0.45]
        b.cells(cells, sprites.DIFFUSE, _random_variants(rng, sprites.DIFFUSE, len(cells)))
    return Deposit(kind, poly, cells, geometry.extent(poly))


def _itc(b: _Builder, rng, f: _NodeFrame, mpp: float, tumour_type: str) -> list[Deposit]:
    """Isolated tumour cells: single cells or tiny clusters in sinuses (all < 0.2 mm)."""
    out = []
    diffuse = tumour_type == "diffuse" or (tumour_type == "mixed" and rng.random() < 0.5)
    if diffuse:  # scattered histiocyte-like / signet-ring single cells
        for c in f.sinus_points(rng, int(rng.integers(2, 10))):
            b.cells(c[None], sprites.DIFFUSE, _random_variants(rng, sprites.DIFFUSE, 1))
            out.append(
                Deposit(
                    "diffuse",
                    geometry.disks_hull(c[None], CELL_BODY_RADIUS_PX),
                    c[None],
                    2 * CELL_BODY_RADIUS_PX,
                )
            )
    else:
        limit_px = _um(mpp, MICRO_MIN_UM) * 0.9
        for c in f.sinus_points(rng, int(rng.integers(1, 4))):
            k = int(rng.integers(1, 9))
            spread = min(rng.uniform(8, 30) * np.sqrt(k), (limit_px - 2 * CELL_BODY_RADIUS_PX) / 2)
            cells = c + rng.normal(0, spread / 2, (k, 2)).clip(-spread, spread)
            cells = cells[geometry.inside_with_margin(cells, f.contour, CELL_BODY_RADIUS_PX + 1)]
            if len(cells) == 0:
                continue
            k = len(cells)
            b.cells(cells, sprites.TUMOUR, _random_variants(rng, sprites.TUMOUR, k))
            hull = geometry.disks_hull(cells, CELL_BODY_RADIUS_PX)
            out.append(Deposit("cluster" if k > 1 else "single", hull, cells, geometry.extent(hull)))
    return out


def _histiocyte_aggregate(b: _Builder, rng, f: _NodeFrame, mpp: float) -> Mimic:
    for _ in range(100):
        c = f.sinus_points(rng, 1)[0]
        r = _um(mpp, rng.uniform(60, 220))
        poly = geometry.blob(rng, c, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), 0.15)
        if geometry.polygon_inside(poly, f.inner):
            break
        c = (c + f.centre) / 2
    else:
        # The smallest nodes (0.5 mm, on the smallest canvases) have no room for those sizes: a smaller
        # aggregate at the centre. (Drawn only now, so that every layout that fitted before is unchanged.)
        r = _um(mpp, 50)
        while True:
            poly = geometry.blob(rng, f.centre, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), 0.15)
            if geometry.polygon_inside(poly, f.inner):
                break
            r *= 0.8
            if r < _um(mpp, 15):
                raise SynthError("could not fit a histiocyte aggregate")
    b.paint(HISTIO, poly)
    cells = _jitter_grid(rng, poly, 30.0, 10.0)
    b.cells(cells, sprites.HISTIOCYTE, _random_variants(rng, sprites.HISTIOCYTE, len(cells)))
    return Mimic("histiocyte_aggregate", poly, cells)


def _cautery(b: _Builder, rng, f: _NodeFrame) -> Mimic:
    a0 = rng.uniform(0, 2 * np.pi)
    span = rng.uniform(0.4, 1.2)
    ang = np.linspace(a0, a0 + span, 40)
    outer = f.point(ang, f.radius_at(ang) + 4)
    inner = f.point(ang[::-1], f.radius_at(ang[::-1]) * (1 - rng.uniform(0.1, 0.25)))
    poly = np.concatenate([outer, inner])
    b.paint(CAUTERY, poly)
    return Mimic("cautery", poly, np.zeros((0, 2)))


def _floater(b: _Builder, rng, centre: np.ndarray, mpp: float) -> Mimic:
    r = _um(mpp, rng.uniform(150, 400))
    poly = geometry.blob(rng, centre, r, r * rng.uniform(0.4, 0.8), rng.uniform(0, np.pi), 0.15)
    b.paint(FLOATER, poly)
    cells = _glands(b, rng, poly, mpp, sprites.BENIGN, None, 0.0)
    return Mimic("floater", poly, cells)


def _place_nodes(cfg: LayoutConfig, rng, categories: list[str]) -> list[tuple[str, np.ndarray, float]]:
    """Non-overlapping node centres and diameters; several packing attempts, best one kept."""
    best: list[tuple[str, np.ndarray, float]] = []
    for _attempt in range(12):
        placed = _try_place_nodes(cfg, rng, categories)
        if len(placed) > len(best):
            best = placed
        if len(best) == len(categories):
            break
    if cfg.categories is not None and len(best) < len(categories):
        w, h = cfg.width_px, cfg.height_px
        raise SynthError(
            f"could not place {len(categories)} nodes ({', '.join(categories)}) on a {w} x {h} px "
            "slide; use a larger slide or fewer nodes"
        )
    return best


def _pair_overlap(overlap: float, cat_a: str, cat_b: str) -> float:
    large = (MICRO, MACRO)
    return 0.0 if cat_a in large and cat_b in large else overlap


def _try_place_nodes(cfg: LayoutConfig, rng, categories: list[str]) -> list[tuple[str, np.ndarray, float]]:
    w, h, mpp = cfg.width_px, cfg.height_px, cfg.mpp
    short_um = min(w, h) * mpp
    max_d_um = min(MAX_NODE_DIAMETER_UM, 0.62 * short_um)
    placed: list[tuple[str, np.ndarray, float]] = []
    # Largest-minimum first, so macrometastasis nodes get room.
    order = sorted(categories, key=lambda c: -MIN_NODE_DIAMETER_UM[c])
    budget = 0.3 * w * h
    gap = _um(mpp, 150)
    # "scanned": bounding circles may overlap by up to this share of the smaller one; one node's
    # outline is then moulded against the other's (outline.moulded_radii), so the nodes touch. Two
    # nodes that must hold a large deposit never overlap: moulding could leave one too small for it.
    overlap = rng.uniform(0.0, 0.9) if cfg.look == "scanned" else 0.0
    room = NODE_ROOM_SCANNED if cfg.look == "scanned" else NODE_ROOM
    for cat in order:
        lo = MIN_NODE_DIAMETER_UM[cat]
        if cat not in (MICRO, MACRO):  # small canvases get smaller nodes, and so does smallest_node_um
            lo = max(min(lo, max_d_um, cfg.smallest_node_um or lo), SMALLEST_NODE_UM)
        if lo > max_d_um:
            raise SynthError(
                f"a {cat} node needs >= {lo / 1000:.1f} mm, but the slide is only "
                f"{short_um / 1000:.1f} mm on its short side"
            )
        d_um = float(np.exp(rng.uniform(np.log(lo), np.log(max(max_d_um, lo * 1.01)))))
        d_um = min(d_um, max(lo, np.sqrt(budget / max(len(order), 1) / np.pi) * 2 * mpp))
        while True:
            r_px = d_um / mpp / 2 * room
            if w > 2 * r_px and h > 2 * r_px:
                cand = np.stack([rng.uniform(r_px, w - r_px, 600), rng.uniform(r_px, h - r_px, 600)], 1)
            else:
                cand = np.array([[w / 2, h / 2]])
            # Free space on each side of a candidate; pack tightly into corners and against other nodes
            # (the two smallest free distances small) so that later nodes still find room.
            free = np.stack(
                [cand[:, 0] - r_px, w - r_px - cand[:, 0], cand[:, 1] - r_px, h - r_px - cand[:, 1]]
                + [
                    np.hypot(*(cand - pc).T)
                    - (
                        r_px
                        + pd / 2 * room
                        + gap
                        - _pair_overlap(overlap, cat, pcat) * (min(r_px, pd / 2 * room) + gap)
                    )
                    for pcat, pc, pd in placed
                ],
                1,
            )
            ok = np.flatnonzero(free.min(1) >= 0)
            if len(ok):
                two = np.sort(free[ok], axis=1)[:, :2].sum(1)
                pick = ok[np.argsort(two)[:3]]
                placed.append((cat, cand[int(rng.choice(pick))], d_um / mpp))
                break
            if d_um <= lo:
                break
            d_um = max(lo, d_um * 0.85)
    return placed


def _artefacts(cfg: LayoutConfig, nodes: list[Node], floaters: list[Mimic]) -> tuple[artefacts.Artefact, ...]:
    """The slide's artefacts (own random stream), clear of every deposit and mimic."""
    keep_out = [d.polygon for n in nodes for d in n.deposits]
    cells = [np.zeros((0, 2))]
    for m in [m for n in nodes for m in n.mimics] + floaters:
        if m.polygon is not None:
            keep_out.append(m.polygon)
        elif len(m.cells):
            cells.append(m.cells)
    return artefacts.draw(
        np.random.default_rng([cfg.seed, 4]),
        cfg.artefacts,
        cfg.site,
        (cfg.width_px, cfg.height_px),
        cfg.mpp,
        [n.contour for n in nodes],
        keep_out,
        np.concatenate(cells).astype(float),
    )


def build_layout(cfg: LayoutConfig) -> SlideLayout:
    """Generate the whole slide layout (deterministic in ``cfg``)."""
    cfg.validate()
    base_per_scene = SCENE_MPP / cfg.mpp
    if math.isclose(base_per_scene, 1.0, rel_tol=1e-9):
        return _build(cfg)
    scene_cfg = replace(
        cfg,
        mpp=SCENE_MPP,
        width_px=math.ceil(cfg.width_px / base_per_scene),
        height_px=math.ceil(cfg.height_px / base_per_scene),
    )
    return _scaled(_build(scene_cfg), base_per_scene, cfg)


def _scaled(scene: SlideLayout, f: float, cfg: LayoutConfig) -> SlideLayout:
    """``scene`` with every coordinate multiplied by ``f`` (base px per scene px), at ``cfg``'s size."""
    pts = lambda a: None if a is None else np.asarray(a, np.float64) * f
    mimic = lambda m: Mimic(m.kind, pts(m.polygon), pts(m.cells))
    nodes = [
        Node(
            n.node_id,
            n.category,
            pts(n.centre),
            pts(n.contour),
            [Deposit(d.kind, pts(d.polygon), pts(d.cells), d.extent_px * f) for d in n.deposits],
            [mimic(m) for m in n.mimics],
        )
        for n in scene.nodes
    ]
    paint = [_paint_op(op.region, pts(op.polygon)) for op in scene.paint]
    return replace(
        scene,
        width_px=int(cfg.width_px),
        height_px=int(cfg.height_px),
        mpp=cfg.mpp,
        artefacts=tuple(artefacts.scaled(a, f) for a in scene.artefacts),
        nodes=nodes,
        floaters=[mimic(m) for m in scene.floaters],
        extranodal=[
            extranodal.Piece(p.kind, pts(p.outline), [(name, pts(poly)) for name, poly in p.parts])
            for p in scene.extranodal
        ],
        paint=paint,
        paint_bbox=_paint_bbox(paint),
        cells=CellTable.build(pts(scene.cells.xy), scene.cells.bank, scene.cells.variant, cfg.width_px),
        scene=scene,
    )


def _build(cfg: LayoutConfig) -> SlideLayout:
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    site = get_site(cfg.site).jittered(rng, cfg.stain_jitter)
    tumour_type = cfg.tumour_type or str(rng.choice(TUMOUR_TYPES, p=[0.45, 0.35, 0.2]))
    categories = _draw_categories(cfg, rng)
    placed = _place_nodes(cfg, rng, categories)
    b = _Builder()
    nodes: list[Node] = []
    mpp = cfg.mpp
    scanned = cfg.look == "scanned"
    ordered = list(enumerate(sorted(placed, key=lambda p: (p[1][1], p[1][0]))))
    if scanned:  # nodes with large deposits first: the others are moulded against them, never they
        ordered.sort(key=lambda item: item[1][0] not in (MICRO, MACRO))
    for node_id, (cat, centre, d_px) in ordered:
        nrng = np.random.default_rng([cfg.seed, 1, node_id])
        f = _NodeFrame(nrng, centre, d_px, mpp, [n.contour for n in nodes] if scanned else None)
        _anatomy(b, nrng, f, mpp)
        node = Node(node_id, cat, centre, f.contour)
        node.mimics += _hevs(b, nrng, f, mpp, int(nrng.integers(2, 7)))
        if cat == NEGATIVE_MIMIC:
            kinds = nrng.choice(
                ["histiocyte_aggregate", "cautery", "floater", "hev"],
                p=[0.4, 0.25, 0.2, 0.15],
                size=int(nrng.integers(1, 3)),
                replace=False,
            )
            for kind in kinds:
                if kind == "histiocyte_aggregate":
                    node.mimics.append(_histiocyte_aggregate(b, nrng, f, mpp))
                elif kind == "cautery":
                    node.mimics.append(_cautery(b, nrng, f))
                elif kind == "floater":
                    a = nrng.uniform(0, 2 * np.pi)
                    node.mimics.append(
                        _floater(b, nrng, f.point(a, f.radius_at(a) * nrng.uniform(0.85, 1.0)), mpp)
                    )
                else:
                    node.mimics += _hevs(b, nrng, f, mpp, int(nrng.integers(10, 25)))
        elif cat == MACRO:
            hi = min(0.85 * 2 * f.mean_r * mpp, 6000.0)
            node.deposits.append(_large_deposit(b, nrng, f, mpp, MACRO_MIN_UM * 1.03, hi, tumour_type, False))
        elif cat == MICRO:
            hi = min(MACRO_MIN_UM * 0.95, 0.8 * 2 * f.mean_r * mpp)
            node.deposits.append(_large_deposit(b, nrng, f, mpp, MICRO_MIN_UM * 1.2, hi, tumour_type, True))
        elif cat == ITC:
            node.deposits += _itc(b, nrng, f, mpp, tumour_type)
        node.mimics.append(_sinus_histiocytes(b, nrng, f))
        got = category_of_extent(node.largest_extent_px, mpp)
        if cat in (MACRO, MICRO, ITC) and got != cat:
            raise SynthError(f"internal: node {node_id} generated as {cat} measures as {got}")
        nodes.append(node)
    nodes.sort(key=lambda n: n.node_id)

    floaters = []
    frng = np.random.default_rng([cfg.seed, 2])
    if frng.random() < 0.3:
        for _ in range(50):
            c = np.array([frng.uniform(0, cfg.width_px), frng.uniform(0, cfg.height_px)])
            if all(
                np.hypot(*(c - n.centre)) > np.abs(n.contour - n.centre).max() * 1.6 + _um(mpp, 900)
                for n in nodes
            ):
                floaters.append(_floater(b, frng, c, mpp))
                break

    pieces = []
    if scanned:  # own stream, after the nodes: their layout is the same with or without these pieces
        clear = [(n.centre, np.abs(n.contour - n.centre).max() + _um(mpp, 150)) for n in nodes]
        clear += [(m.polygon.mean(0), np.abs(m.polygon - m.polygon.mean(0)).max()) for m in floaters]
        pieces = extranodal.draw(
            np.random.default_rng([cfg.seed, 5]), cfg.extranodal, (cfg.width_px, cfg.height_px), mpp, clear
        )
        for piece in pieces:
            for part, poly in piece.parts:
                b.paint(_PART_REGION[part], poly, background=True)

    # Scanner and section come from their own stream, so a look's node shapes never shift them.
    srng = np.random.default_rng([cfg.seed, 3])
    ops = b.ops()
    xy = np.concatenate(b.cell_xy) if b.cell_xy else np.zeros((0, 2))
    bank = np.concatenate(b.cell_bank) if b.cell_bank else np.zeros(0, np.uint8)
    variant = np.concatenate(b.cell_variant) if b.cell_variant else np.zeros(0, np.int64)
    if scanned:  # swapped after all draws, so the layout's random stream and cell centres stay the same
        bank = sprites.scanned_cells(bank, variant)
    return SlideLayout(
        width_px=int(cfg.width_px),
        height_px=int(cfg.height_px),
        mpp=mpp,
        seed=int(cfg.seed),
        site=site,
        tumour_type=tumour_type,
        look=cfg.look,
        scanner=optics.jittered(cfg.site, srng),
        section=draw_section(srng),
        artefacts=_artefacts(cfg, nodes, floaters) if cfg.look == "scanned" else (),
        nodes=nodes,
        floaters=floaters,
        extranodal=pieces,
        paint=ops,
        paint_bbox=_paint_bbox(ops),
        cells=CellTable.build(xy, bank, variant, cfg.width_px),
    )
