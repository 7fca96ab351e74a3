"""H&E rendering of any window of a slide layout: ``render_region(layout, x0, y0, w, h) -> uint8 RGB``.

Model: per-pixel haematoxylin and eosin concentrations are built from the region map (polygons
rasterised for the window plus a margin), smooth/fine textures, fat-cell membranes, background nuclei
(and, in the "scanned" look, red cells in vessel lumina, plasma cells in medullary cords and
centroblasts in germinal centres) from coordinate-hashed grids and the layout's explicit cells; the
site's Beer-Lambert stain model turns them into RGB, glass is pure white. Every ingredient depends
only on global coordinates, so any window equals the matching crop of any larger window (no seams),
and no full-size array is ever needed. Only numpy / OpenCV are used; all state is local, so windows
can be rendered from many threads. Everything is drawn at ``layout.SCENE_MPP``; a slide at another
resolution samples its scene (``SlideLayout.scene``) at its own pixel centres.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from lnassist.slide import polygon_mask
from lnassist.synth import SynthError, artefacts, noise, optics, sprites
from lnassist.synth import layout as L
from lnassist.synth.section import thickness
from lnassist.synth.stain import concentrations_to_rgb

LYMPH_GRID_PX = 11  # ~5 um: lymphocyte nuclei (~6 um) touch and overlap in the cortex
SPINDLE_GRID_PX = 36
FAT_CELL_PX = 190  # adipocytes ~ 90 um
FIBRE_ANGLE = 0.6  # mean collagen-fibre direction (radians); warped locally
RED_CELL_GRID_PX = 8  # red cells (~16 px across) one per 8 px cell: packed, overlapping, as in vessels
RED_CELL_FILL = 0.9  # share of grid cells of a full lumen holding a red cell
SINUS_MESH_PX = 24  # sinus reticulin meshes ~11 um wide
PLASMA_GRID_PX = 20  # plasma cells ~9 um: at most one per 20 px cell, among the cords' lymphocytes
SIGNET_NUCLEUS_H = 0.5  # a signet-ring sprite's haematoxylin above this is its nucleus
CENTROBLAST_GRID_PX = 22  # centroblasts ~10 um with their cytoplasm: at most one per 22 px cell
TINGIBLE_GRID_PX = 90  # tingible-body macrophages ~20 um: at most one per 90 px (41 um) cell

# Per region: background H, background E, lymphoid nucleus probability per grid cell, nucleus bank,
# fibroblast probability per spindle-grid cell, collagen-fibre texture strength.
_REGIONS = {
    L.GLASS: (0.0, 0.0, 0.0, sprites.LYMPH, 0.0, 0.0),
    L.FAT: (0.0, 0.0, 0.0, sprites.LYMPH, 0.0, 0.0),
    L.STROMA: (0.05, 0.42, 0.005, sprites.LYMPH, 0.35, 0.45),
    L.CAPSULE: (0.06, 0.45, 0.02, sprites.LYMPH, 0.6, 0.4),
    L.SINUS: (0.07, 0.1, 0.14, sprites.LYMPH, 0.0, 0.0),
    L.CORTEX: (0.2, 0.1, 0.9, sprites.LYMPH, 0.0, 0.0),
    L.MANTLE: (0.24, 0.08, 0.97, sprites.LYMPH, 0.0, 0.0),
    L.GERMINAL: (0.14, 0.16, 0.6, sprites.GC_CELL, 0.0, 0.0),
    L.MEDULLA: (0.14, 0.16, 0.6, sprites.LYMPH, 0.08, 0.2),
    L.TUMOUR: (0.08, 0.3, 0.04, sprites.LYMPH, 0.15, 0.3),
    L.TUMOUR_DIFFUSE: (0.14, 0.12, 0.55, sprites.LYMPH, 0.0, 0.0),
    L.HISTIO: (0.06, 0.14, 0.06, sprites.LYMPH, 0.0, 0.0),
    L.CAUTERY: (0.38, 0.28, 0.85, sprites.CRUSHED, 0.0, 0.0),
    L.VESSEL: (0.03, 0.95, 0.0, sprites.LYMPH, 0.0, 0.0),
    L.GLAND_LUMEN: (0.02, 0.06, 0.01, sprites.LYMPH, 0.0, 0.0),
    L.FLOATER: (0.05, 0.3, 0.01, sprites.LYMPH, 0.25, 0.4),
    L.HEV_LUMEN: (0.03, 0.12, 0.15, sprites.LYMPH, 0.0, 0.0),
    # Extranodal: loose wavy dermal collagen; keratinocytes (vesicular nuclei, pink cytoplasm) about
    # one per 15 um cell; pale laminated keratin; deeply eosinophilic muscle with sparse nuclei.
    L.DERMIS: (0.05, 0.6, 0.005, sprites.LYMPH, 0.3, 0.6),
    L.EPIDERMIS: (0.18, 0.32, 0.6, sprites.GC_CELL, 0.0, 0.0),
    L.KERATIN: (0.0, 0.3, 0.0, sprites.LYMPH, 0.0, 0.5),
    L.MUSCLE: (0.02, 0.8, 0.004, sprites.LYMPH, 0.1, 0.2),
}
_LUT = np.array([_REGIONS[r] for r in range(L.N_REGIONS)], dtype=np.float32)
LUT_H, LUT_E, LUT_LYMPH_P, LUT_SPINDLE_P, LUT_FIBRE = (
    np.ascontiguousarray(_LUT[:, i]) for i in (0, 1, 2, 4, 5)
)
LUT_LYMPH_BANK = _LUT[:, 3].astype(np.int64)


@dataclass(frozen=True)
class Scene:
    """Look-dependent parts of the stained scene (see ``layout.LOOKS``)."""

    lut_h: np.ndarray  # background haematoxylin per region
    e_scale: float  # eosin overall (the "vector" eosin is about twice the OD of real LN tiles)
    lymph_grid_px: int  # one candidate lymphocyte per grid cell
    nucleus_gain: float  # haematoxylin of the dense background nuclei (lymphocytes, fibroblasts)
    grain: str  # texture modulating H and E everywhere
    h_grain: float
    e_grain: float
    chromatin: float  # granular modulation of H where H is nuclear, per texture std (0: flat nuclei)
    stain_blotch: float  # uneven eosin staining of fibrous tissue at the bundle scale
    lut_e: np.ndarray  # background eosin per region
    lut_lymph_p: np.ndarray  # lymphoid nucleus probability per grid cell, per region
    red_cells: bool  # vessel lumina packed with red cells (else a flat eosin fill)
    sinus_mesh: float  # eosin of the reticulin meshwork and loose content of sinuses
    lumen_debris: float  # eosin of mucin and necrotic debris in gland lumina
    plasma_p: float  # plasma cells per PLASMA_GRID_PX cell of the medullary cords
    lut_lymph_bank: np.ndarray  # sprite bank of the lymphoid nuclei, per region
    centroblast_p: float  # centroblasts per CENTROBLAST_GRID_PX cell of the germinal centres
    tingible_p: float  # tingible-body macrophages per TINGIBLE_GRID_PX cell of the germinal centres


# In "scanned", lymphoid tissue between nuclei is pale (real cortex is nuclei on a light background,
# not a purple wash) and every surface has the fine granularity of fixed tissue at 20x.
_PALE_GAPS = {L.CORTEX: 0.1, L.MANTLE: 0.11, L.GERMINAL: 0.1, L.MEDULLA: 0.1, L.TUMOUR_DIFFUSE: 0.1}
# Lumina hold pale plasma between red cells; sinuses a few more passing lymphocytes; gland lumina
# karyorrhectic nuclear dust in their debris.
_SCANNED_E = {L.VESSEL: 0.12}
_SCANNED_LYMPH_P = {L.SINUS: 0.2, L.GLAND_LUMEN: 0.12}


def _override(lut: np.ndarray, values: dict[int, float]) -> np.ndarray:
    return np.array([values.get(r, lut[r]) for r in range(L.N_REGIONS)], dtype=np.float32)


SCENES = {
    "vector": Scene(
        LUT_H,
        1.0,
        LYMPH_GRID_PX,
        1.0,
        "grain",
        0.15,
        0.12,
        0.0,
        0.0,
        LUT_E,
        LUT_LYMPH_P,
        False,
        0.0,
        0.0,
        0.0,
        LUT_LYMPH_BANK,
        0.0,
        0.0,
    ),
    # Lymphocytes one per ~6 um: distinct nuclei with pale gaps, overlapping where jitter brings
    # them together, as in real cortex (the count per mm^2 of real PCam tiles).
    "scanned": Scene(
        _override(LUT_H, _PALE_GAPS),
        0.75,
        13,
        0.9,
        "grain_multi",
        0.35,
        0.35,
        0.3,
        0.3,
        _override(LUT_E, _SCANNED_E),
        _override(LUT_LYMPH_P, _SCANNED_LYMPH_P),
        True,
        0.35,
        0.3,
        0.45,
        # Germinal centres: small dense centrocytes (lymphocyte sprites) among the centroblasts drawn
        # over them, not the flat blast sprites of "vector".
        np.where(np.arange(L.N_REGIONS) == L.GERMINAL, sprites.LYMPH, LUT_LYMPH_BANK),
        0.4,
        0.35,
    ),
}
CHROMATIN_H = 0.45  # H concentration above which a pixel counts as nuclear for the chromatin texture

_TEXTURES: dict[str, np.ndarray] = {}
_TEX_LOCK = threading.Lock()


def _texture(name: str) -> np.ndarray:
    if name not in _TEXTURES:
        with _TEX_LOCK:
            if name not in _TEXTURES:
                if name == "grain":
                    _TEXTURES[name] = noise.periodic_texture(101, 1024, 1.2)
                elif name == "grain_fine":  # granules ~0.5 um
                    _TEXTURES[name] = noise.periodic_texture(104, 1024, 0.7)
                elif name == "grain_multi":  # granules to cell-sized mottling: fixed tissue at 20x
                    tex = sum(
                        a * noise.periodic_texture(105 + i, 1024, sigma)
                        for i, (a, sigma) in enumerate(((1.0, 0.6), (0.8, 1.5), (0.6, 4.0)))
                    )
                    _TEXTURES[name] = tex / tex.std()
                else:  # collagen fibres: long along x, thin along y
                    _TEXTURES[name] = _fibre_texture(102, 1024)
    return _TEXTURES[name]


def _fibre_texture(seed: int, period: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((period, period))
    fy = np.fft.fftfreq(period)[:, None]
    fx = np.fft.fftfreq(period)[None, :]
    kernel = np.exp(-2 * np.pi**2 * ((fx * 30.0) ** 2 + (fy * 1.6) ** 2))
    tex = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    tex = np.tanh(1.5 * (tex - tex.mean()) / tex.std())
    return np.tile(tex.astype(np.float32), (2, 2))


def _check_window(x0: int, y0: int, w: int, h: int) -> None:
    for name, v in (("x0", x0), ("y0", y0), ("w", w), ("h", h)):
        if not isinstance(v, int | np.integer):
            raise SynthError(f"{name} must be an integer, got {v!r}")
    if w <= 0 or h <= 0:
        raise SynthError(f"window size must be positive, got w={w}, h={h}")


def fill_polygon(out: np.ndarray, polygon: np.ndarray, x0: int, y0: int, value: int) -> None:
    """Set pixels of ``out`` (window at global x0, y0) whose centres are inside ``polygon`` (even-odd).

    The slide module's rasteriser depends only on global pixel centres, so every window rasterises a
    polygon identically where windows overlap (cv2.fillPoly is not exactly translation-invariant).
    """
    h, w = out.shape
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    c0, c1 = max(int(np.floor(lo[0])) - x0, 0), min(int(np.ceil(hi[0])) + 1 - x0, w)
    r0, r1 = max(int(np.floor(lo[1])) - y0, 0), min(int(np.ceil(hi[1])) + 1 - y0, h)
    if c1 <= c0 or r1 <= r0:
        return
    inside = polygon_mask(polygon, x0 + c0, y0 + r0, c1 - c0, r1 - r0, mpp=1.0, base_mpp=1.0)
    out[r0:r1, c0:c1][inside] = value


def _region_map(layout: L.SlideLayout, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
    """Region labels of the window (uint8) or None when no tissue reaches it."""
    ops = layout.paint_ops_in(x0, y0, x0 + w, y0 + h)
    if not ops:
        return None
    label = np.zeros((h, w), dtype=np.uint8)
    for op in ops:
        fill_polygon(label, op.polygon, x0, y0, op.region)
    return label


def _fat_membranes(seed: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    edge = noise.lattice_upsample(
        x0, y0, w, h, 2, lambda gx, gy: noise.worley_edge_distance(seed, 7, gx, gy, 2, FAT_CELL_PX, 0.9)
    )
    return np.clip(np.float32(1.6) - edge * np.float32(0.5), 0.0, 1.0)


def _fibres(seed: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Wavy collagen texture in [-1, 1]: a fibre texture sampled through a smooth domain warp."""
    tex = _texture("fibre")
    period = tex.shape[0] // 2
    warp_v = noise.value_noise(seed, 11, x0, y0, w, h, 256) * np.float32(60.0)
    warp_a = noise.value_noise(seed, 12, x0, y0, w, h, 512) * np.float32(0.5)
    xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    ang = np.float32(FIBRE_ANGLE) + warp_a
    ca, sa = np.cos(ang), np.sin(ang)
    u = xs * ca + ys * sa
    v = ys * ca - xs * sa + warp_v
    iu = np.floor(u).astype(np.int64) % period
    iv = np.floor(v).astype(np.int64) % period
    return tex[iv, iu]


def _stamp_max(
    target: np.ndarray,
    bank: sprites.Bank,
    cx: np.ndarray,
    cy: np.ndarray,
    variant: np.ndarray,
    gain: float,
    channel: np.ndarray | None = None,
) -> None:
    """target = max(target, gain * sprite) for every sprite (order-independent, vectorised), clipped.

    ``channel``: which of the bank's maps to stamp (default its haematoxylin)."""
    if len(cx) == 0:
        return
    h, w = target.shape
    k = bank.size
    off = np.arange(k) - k // 2
    ys = cy[:, None, None] + off[None, :, None]
    xs = cx[:, None, None] + off[None, None, :]
    maps = bank.h if channel is None else channel
    vals = maps[variant] * np.float32(gain) if gain != 1.0 else maps[variant]
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w) & (vals > 0.01)
    np.maximum.at(target.reshape(-1), (ys * w + xs)[ok], vals[ok])


def _hashed_centres(
    seed: int, stream: int, grid: int, reach: int, x0: int, y0: int, w: int, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, hash) of one hashed point per ``grid`` cell, for points within ``reach`` of the window."""
    gx = np.arange((x0 - reach) // grid, (x0 + w + reach) // grid + 1, dtype=np.int64)
    gy = np.arange((y0 - reach) // grid, (y0 + h + reach) // grid + 1, dtype=np.int64)
    hv = noise.hash_u64(seed, stream, gx[None, :], gy[:, None]).ravel()
    gxx = np.broadcast_to(gx[None, :], (len(gy), len(gx))).ravel()
    gyy = np.broadcast_to(gy[:, None], (len(gy), len(gx))).ravel()
    m16 = np.uint64(0xFFFF)
    cx = gxx * grid + ((hv & m16).astype(np.int64) * grid >> 16)
    cy = gyy * grid + (((hv >> np.uint64(16)) & m16).astype(np.int64) * grid >> 16)
    keep = (cx >= x0 - reach) & (cx < x0 + w + reach) & (cy >= y0 - reach) & (cy < y0 + h + reach)
    return cx[keep], cy[keep], hv[keep]


def _hash_fraction(hv: np.ndarray, shift: int) -> np.ndarray:
    """16 bits of each hash from bit ``shift``, as a uniform number in [0, 1)."""
    return ((hv >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.float32) / np.float32(65536.0)


def red_cells(
    layout: L.SlideLayout, label_pad: np.ndarray, pad: int, x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """Eosin of the red cells in the window's vessel lumina (0 elsewhere), from hashed grid points.

    Lumina are packed to different degrees (a smooth density field), HEV lumina hold a few; red cells
    are clipped to their lumen, so none shows outside a vessel.
    """
    bank = sprites.banks()[sprites.RED_CELL]
    reach = bank.size // 2
    cx, cy, hv = _hashed_centres(layout.seed, 22, RED_CELL_GRID_PX, reach, x0, y0, w, h)
    region = label_pad[cy - (y0 - pad), cx - (x0 - pad)]
    fill = np.where(region == L.VESSEL, RED_CELL_FILL, np.where(region == L.HEV_LUMEN, 0.12, 0.0))
    density = noise.value_noise(layout.seed, 23, x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad, 90)
    fill = fill * np.clip(0.75 + 0.6 * density[cy - (y0 - pad), cx - (x0 - pad)], 0.1, 1.0)
    acc = _hash_fraction(hv, 32) < fill
    cx, cy, hv = cx[acc], cy[acc], hv[acc]
    out = np.zeros((h, w), dtype=np.float32)
    pick = (hv >> np.uint64(48)).astype(np.int64) % bank.n_variants
    _stamp_max(out, bank, cx - x0, cy - y0, pick, 1.0, bank.e)
    lumen = label_pad[pad : pad + h, pad : pad + w]
    return out * ((lumen == L.VESSEL) | (lumen == L.HEV_LUMEN))


def _plasma_cells(
    layout: L.SlideLayout,
    label_pad: np.ndarray,
    pad: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    p: float,
    H: np.ndarray,
    E: np.ndarray,
) -> None:
    """Plasma cells of the medullary cords, from hashed grid points, stamped with max into H and E."""
    bank = sprites.banks()[sprites.PLASMA]
    cx, cy, hv = _hashed_centres(layout.seed, 24, PLASMA_GRID_PX, bank.size // 2, x0, y0, w, h)
    acc = (label_pad[cy - (y0 - pad), cx - (x0 - pad)] == L.MEDULLA) & (_hash_fraction(hv, 32) < p)
    cx, cy, hv = cx[acc] - x0, cy[acc] - y0, hv[acc]
    pick = (hv >> np.uint64(48)).astype(np.int64) % bank.n_variants
    _stamp_max(H, bank, cx, cy, pick, 1.0)
    _stamp_max(E, bank, cx, cy, pick, 1.0, bank.e)


def germinal_cell_centres(
    layout: L.SlideLayout,
    label_pad: np.ndarray,
    pad: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    bank_id: int,
    p: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, variant) of the germinal-centre cells of one bank (centroblasts or tingible-body
    macrophages) that reach the window (global px), from hashed grid points whose centre lies in a
    germinal centre."""
    stream, grid = _GERMINAL_CELLS[bank_id]
    bank = sprites.banks()[bank_id]
    cx, cy, hv = _hashed_centres(layout.seed, stream, grid, bank.size // 2, x0, y0, w, h)
    acc = (label_pad[cy - (y0 - pad), cx - (x0 - pad)] == L.GERMINAL) & (_hash_fraction(hv, 32) < p)
    return cx[acc], cy[acc], (hv[acc] >> np.uint64(48)).astype(np.int64) % bank.n_variants


_GERMINAL_CELLS = {  # bank: (hash stream, grid px)
    sprites.CENTROBLAST: (26, CENTROBLAST_GRID_PX),
    sprites.TINGIBLE_BODY: (27, TINGIBLE_GRID_PX),
}


def _germinal_cells(
    layout: L.SlideLayout,
    label_pad: np.ndarray,
    pad: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    bank_id: int,
    p: float,
    H: np.ndarray,
    E: np.ndarray,
) -> None:
    """Composite one bank's germinal-centre cells over what is already drawn there.

    The cells are first merged with max among themselves (order-independent, so seamless) and the
    merged layer then goes over H and E: their pale cytoplasm and open nuclei hide the dense nuclei
    below."""
    bank = sprites.banks()[bank_id]
    cx, cy, pick = germinal_cell_centres(layout, label_pad, pad, x0, y0, w, h, bank_id, p)
    if len(cx) == 0:
        return
    layer_h, layer_e, layer_a = (np.zeros((h, w), np.float32) for _ in range(3))
    for layer, channel in ((layer_h, bank.h), (layer_e, bank.e), (layer_a, bank.alpha)):
        _stamp_max(layer, bank, cx - x0, cy - y0, pick, 1.0, channel)
    keep = np.float32(1.0) - layer_a
    H *= keep
    H += layer_h
    E *= keep
    E += layer_e


def _reticulin(seed: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Fine meshwork in [0, 1]: the reticulin strands and loose cell debris that sinuses hold."""
    edge = noise.lattice_upsample(
        x0, y0, w, h, 2, lambda gx, gy: noise.worley_edge_distance(seed, 15, gx, gy, 2, SINUS_MESH_PX, 0.9)
    )
    strands = np.clip(np.float32(1.0) - edge * np.float32(0.7), 0.0, 1.0)
    # Patchy: stretches of open mesh between denser, pinker loose content.
    return strands * np.clip(np.float32(0.6) + noise.fractal_noise(seed, 16, x0, y0, w, h, 60, 3), 0.0, 1.5)


def _hashed_nuclei(
    layout: L.SlideLayout,
    label_pad: np.ndarray,
    pad: int,
    x0: int,
    y0: int,
    w: int,
    h: int,
    grid: int,
    stream: int,
    lut_p: np.ndarray,
    H: np.ndarray,
    gain: float,
    lut_bank: np.ndarray,
) -> None:
    """Background nuclei from a per-grid-cell hash (never stored): one candidate per grid cell."""
    banks = sprites.banks()
    reach = (
        max(banks[b].size for b in (sprites.LYMPH, sprites.GC_CELL, sprites.CRUSHED, sprites.SPINDLE)) // 2
    )
    cx, cy, hv = _hashed_centres(layout.seed, stream, grid, reach, x0, y0, w, h)
    region = label_pad[cy - (y0 - pad), cx - (x0 - pad)]
    acc = _hash_fraction(hv, 32) < lut_p[region]
    cx, cy, hv, region = cx[acc], cy[acc], hv[acc], region[acc]
    pick = (hv >> np.uint64(48)).astype(np.int64)
    if stream == 21:  # fibroblasts: oriented along the collagen
        bank = banks[sprites.SPINDLE]
        ang = FIBRE_ANGLE + (pick % 64 - 32) / 64.0
        _stamp_max(H, bank, cx - x0, cy - y0, sprites.angle_variant(bank, ang, pick // 64), gain)
        return
    bank_ids = lut_bank[region]
    for bid in np.unique(bank_ids):
        sel = bank_ids == bid
        bank = banks[int(bid)]
        _stamp_max(H, bank, cx[sel] - x0, cy[sel] - y0, pick[sel] % bank.n_variants, gain)


def _explicit_cells(
    layout: L.SlideLayout, x0: int, y0: int, w: int, h: int, H: np.ndarray, E: np.ndarray
) -> None:
    """Alpha-composite the layout's cells (tumour, histiocytes, ...) in painter's order, clipped."""
    banks = sprites.banks()
    reach = sprites.max_radius()
    idx = layout.cells.query(x0 - reach, y0 - reach, x0 + w + reach, y0 + h + reach)
    table = layout.cells
    for i in idx:
        bank = banks[int(table.bank[i])]
        v = int(table.variant[i]) % bank.n_variants
        k = bank.size
        cx = int(np.floor(table.xy[i, 0])) - x0 - k // 2
        cy = int(np.floor(table.xy[i, 1])) - y0 - k // 2
        sx0, sy0 = max(0, -cx), max(0, -cy)
        sx1, sy1 = min(k, w - cx), min(k, h - cy)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        tgt = (slice(cy + sy0, cy + sy1), slice(cx + sx0, cx + sx1))
        a = bank.alpha[v, sy0:sy1, sx0:sx1]
        keep = np.float32(1.0) - a
        H[tgt] = H[tgt] * keep + bank.h[v, sy0:sy1, sx0:sx1]
        E[tgt] = E[tgt] * keep + bank.e[v, sy0:sy1, sx0:sx1]
    # A signet ring's crescent lies at its rim, where the cells painted after it in a crowded deposit
    # would cover it: its nucleus goes on top of them all (max, so in any order).
    signet = idx[table.bank[idx] == sprites.SIGNET]
    if len(signet):
        bank = banks[sprites.SIGNET]
        nuclei = np.where(bank.h > SIGNET_NUCLEUS_H, bank.h, np.float32(0.0))
        cx, cy = (np.floor(table.xy[signet]).astype(np.int64) - (x0, y0)).T
        _stamp_max(H, bank, cx, cy, table.variant[signet] % bank.n_variants, 1.0, nuclei)


def render_concentrations(
    layout: L.SlideLayout, x0: int, y0: int, w: int, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(H, E, region) float32/uint8 maps of the window, or None if the window has no tissue."""
    _check_window(x0, y0, w, h)
    if layout.scene is not None:
        raise SynthError(
            f"stain maps exist at {L.SCENE_MPP} um/px only: pass this {layout.mpp} um/px layout's .scene"
        )
    x0, y0, w, h = int(x0), int(y0), int(w), int(h)
    pad = sprites.max_radius() + 1
    label_pad = _region_map(layout, x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)
    if label_pad is None:
        return None
    region = label_pad[pad : pad + h, pad : pad + w]
    scene = SCENES[layout.look]
    H = scene.lut_h[region]
    E = scene.lut_e[region] * np.float32(scene.e_scale)
    present = np.bincount(region.ravel(), minlength=L.N_REGIONS) > 0
    seed = layout.seed
    if present[L.FAT]:
        E += _fat_membranes(seed, x0, y0, w, h) * np.float32(0.4) * (region == L.FAT)
    fibre_amp = LUT_FIBRE[region]
    if (LUT_FIBRE[present] > 0).any():
        E *= np.float32(1.0) + fibre_amp * _fibres(seed, x0, y0, w, h)
        if scene.stain_blotch:
            blotch = noise.fractal_noise(seed, 13, x0, y0, w, h, 160, 3)
            E *= np.float32(1.0) + np.float32(scene.stain_blotch) * (fibre_amp > 0) * blotch
    grain = _texture(scene.grain)
    H *= np.float32(1.0) + np.float32(scene.h_grain) * noise.texture_window(grain, x0, y0, w, h)
    E *= np.float32(1.0) + np.float32(scene.e_grain) * noise.texture_window(grain, x0 + 517, y0 + 311, w, h)
    E *= np.float32(1.0) + np.float32(0.12) * noise.value_noise(seed, 3, x0, y0, w, h, 700)
    if scene.sinus_mesh and present[L.SINUS]:  # the mesh is costly: only over the sinuses' bounding box
        sinus = region == L.SINUS
        rows, cols = np.flatnonzero(sinus.any(1)), np.flatnonzero(sinus.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        mesh = _reticulin(seed, x0 + int(c0), y0 + int(r0), int(c1 - c0), int(r1 - r0))
        E[r0:r1, c0:c1] += np.float32(scene.sinus_mesh) * mesh * sinus[r0:r1, c0:c1]
    if scene.lumen_debris and present[L.GLAND_LUMEN]:  # mucin and necrotic debris, patchy
        debris = np.float32(1.0) + noise.value_noise(seed, 14, x0, y0, w, h, 40)
        E += np.float32(scene.lumen_debris) * debris * (region == L.GLAND_LUMEN)
    if scene.red_cells and (present[L.VESSEL] or present[L.HEV_LUMEN]):
        red = red_cells(layout, label_pad, pad, x0, y0, w, h) * np.float32(scene.e_scale)
        np.maximum(E, red, out=E, where=red > 0)  # only in lumina: elsewhere E is left exactly as is
    # Cords just outside the window still reach into it with their cells: look in the margin too.
    if scene.plasma_p and (label_pad == L.MEDULLA).any():
        _plasma_cells(layout, label_pad, pad, x0, y0, w, h, scene.plasma_p, H, E)
    for grid, stream, lut_p in (
        (scene.lymph_grid_px, 20, scene.lut_lymph_p),
        (SPINDLE_GRID_PX, 21, LUT_SPINDLE_P),
    ):
        _hashed_nuclei(
            layout,
            label_pad,
            pad,
            x0,
            y0,
            w,
            h,
            grid,
            stream,
            lut_p,
            H,
            scene.nucleus_gain,
            scene.lut_lymph_bank,
        )
    if (scene.centroblast_p or scene.tingible_p) and (label_pad == L.GERMINAL).any():
        for bank_id, p in (
            (sprites.CENTROBLAST, scene.centroblast_p),
            (sprites.TINGIBLE_BODY, scene.tingible_p),
        ):
            _germinal_cells(layout, label_pad, pad, x0, y0, w, h, bank_id, p, H, E)
    _explicit_cells(layout, x0, y0, w, h, H, E)
    H *= np.float32(1.0) + np.float32(0.08) * noise.value_noise(seed, 4, x0, y0, w, h, 900)
    if scene.chromatin:
        nuclear = np.clip((H - np.float32(CHROMATIN_H)) * np.float32(4.0), 0.0, 1.0)
        clumps = noise.texture_window(_texture("grain_fine"), x0 + 211, y0 + 733, w, h)
        # Clipped at 2 std: clumps and clearings within a nucleus, never holes through it (a factor
        # near zero left white speckles in the lymphocytes).
        H *= np.float32(1.0) + np.float32(scene.chromatin) * nuclear * np.clip(clumps, -2.0, 2.0)
    if layout.look == "scanned":
        t = thickness(seed, layout.section, (layout.width_px, layout.height_px), x0, y0, w, h)
        H *= t
        E *= t
    return H, E, region


def render_region(layout: L.SlideLayout, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """uint8 RGB (h, w, 3) of the base-level window at (x0, y0); pixels outside tissue are 255."""
    _check_window(x0, y0, w, h)
    x0, y0, w, h = int(x0), int(y0), int(w), int(h)
    if layout.scene is not None:
        return _resampled(layout, x0, y0, w, h)
    m = optics.margin_px(layout.scanner) if layout.look == "scanned" else 0
    maps = render_concentrations(layout, x0 - m, y0 - m, w + 2 * m, h + 2 * m)
    if maps is None:
        return np.full((h, w, 3), 255, dtype=np.uint8)
    H, E, region = maps
    if m:
        tissue = (region != L.GLASS).astype(np.float32)
        ink = artefacts.apply(layout.artefacts, tissue, H, E, x0 - m, y0 - m)
        rgb = optics.scan(H, E, layout.site.od_matrix(), layout.scanner, layout.seed, x0, y0, m, ink)
        region = region[m : m + h, m : m + w]
    else:
        rgb = concentrations_to_rgb(H, E, layout.site.od_matrix())
    rgb[region == L.GLASS] = 255
    return rgb


def _resampled(layout: L.SlideLayout, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The window of a slide at another mpp, from its scene: every base pixel samples the scene at its
    centre (bilinear; a slide coarser than the scene is smoothed first, so it does not alias). Each
    output pixel is a fixed function of global scene pixels, so windows stay seamless."""
    scene = layout.scene
    s = layout.mpp / scene.mpp  # scene px per base px
    ux = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * s - 0.5
    uy = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * s - 0.5
    ix, iy = np.floor(ux).astype(np.int64), np.floor(uy).astype(np.int64)
    kernel = _antialias_kernel(s)
    m = len(kernel) // 2
    sx0, sy0 = int(ix[0]) - m, int(iy[0]) - m
    rgb = render_region(scene, sx0, sy0, int(ix[-1]) + 2 + m - sx0, int(iy[-1]) + 2 + m - sy0)
    rgb = rgb.astype(np.float32)
    if m:  # separable, as shifted sums: the same arithmetic for a pixel in every window
        n = len(kernel)
        rgb = sum(k * rgb[i : rgb.shape[0] - n + 1 + i] for i, k in enumerate(kernel))
        rgb = sum(k * rgb[:, i : rgb.shape[1] - n + 1 + i] for i, k in enumerate(kernel))
    cx, cy = ix - int(ix[0]), iy - int(iy[0])
    fx = (ux - ix).astype(np.float32)[None, :, None]
    fy = (uy - iy).astype(np.float32)[:, None, None]
    top, bottom = rgb[cy], rgb[cy + 1]
    top = top[:, cx] * (np.float32(1.0) - fx) + top[:, cx + 1] * fx
    bottom = bottom[:, cx] * (np.float32(1.0) - fx) + bottom[:, cx + 1] * fx
    out = top * (np.float32(1.0) - fy) + bottom * fy
    return np.clip(out + np.float32(0.5), 0, 255).astype(np.uint8)


def _antialias_kernel(scene_px_per_px: float) -> np.ndarray:
    """1-D Gaussian bringing the scene's blur to about half an output pixel (nothing when upsampling)."""
    if scene_px_per_px <= 1.0:
        return np.ones(1, np.float32)
    sigma = 0.5 * np.sqrt(scene_px_per_px**2 - 1.0)
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)
