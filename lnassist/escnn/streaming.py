"""Exact streaming forward/backward of the ESCNN classifier over images far larger than memory.

The image is split into overlapping tiles whose overlap follows from the trunk's receptive field
and stride (:mod:`lnassist.escnn.receptive`). Tiles start on multiples of the output stride, so
every tile's feature grid is a window of the whole image's grid; each output cell is *owned* by
exactly one tile, in which its receptive field lies entirely (or is cut only by the image border),
so the stitched owned cells equal the whole-image feature map exactly.

Forward (no autograd): each tile is read from a :class:`~lnassist.escnn.sources.TileSource`,
pushed through the trunk, cropped to its owned cells and reduced to a per-channel maximum and
its position (global max pooling, local part). Backward: the loss gradient reaches one cell per
channel (the argmax), so only tiles holding an argmax get a non-zero feature gradient; each such
tile is read again, recomputed with autograd and ``torch.autograd.grad`` accumulates the
parameter gradients into ``.grad``. No input gradient is computed.

ESCNN speed-ups (switchable in :class:`StreamingConfig`): white tiles (the source returns
``None``) are neither read further, augmented nor computed; their trunk output is that of a white
tile of the same shape, computed once per shape (the constant-tile cache), and white tiles that do
hold an argmax share one backward per shape (the backward is linear in the feature gradient).
Tiles whose feature gradient is all zero are skipped in the backward pass. Reading runs ahead in
background threads (:mod:`lnassist.escnn.prefetch`) in both passes.

Beyond the paper: since the gradient only enters at the argmax cells, the backward pass may
instead recompute, for each argmax cell, just the smallest stride-aligned window holding its
receptive field (exact for the same reason as a tile), batching windows of equal layout.
``StreamingConfig.recompute="auto"`` (default) picks per step whichever recomputes fewer pixels:
whole tiles when few tiles hold all argmaxes, cell windows when a many-channel trunk (2048 for
ResNet50) spreads its argmaxes over many tiles of a large image.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lnassist.errors import LnassistError
from lnassist.escnn.model import ESCNNModel, window_to_input
from lnassist.escnn.prefetch import prefetch
from lnassist.escnn.receptive import AxisGeometry, TrunkGeometry
from lnassist.escnn.sources import WHITE, TileSource

# Tile sizes from the paper: 3072 px on GPUs with >= 32 GB, else 2048; small on CPU.
TILE_PX_GPU_LARGE = 3072
TILE_PX_GPU_SMALL = 2048
GPU_LARGE_BYTES = 32 * 1024**3
TILE_PX_CPU = 512
RECOMPUTE = ("auto", "tiles", "cells")


class StreamingError(LnassistError):
    """A trunk, tile size or source the engine cannot stream exactly."""


@dataclass(frozen=True)
class StreamingConfig:
    """How to stream. ``tile_px=None`` picks the paper's size for the model's device."""

    tile_px: int | None = None
    skip_white: bool = True  # white tiles: no read/augment/compute, cached result per tile shape
    skip_zero_grad: bool = True  # no recomputation for tiles whose feature gradient is all zero
    # What the backward pass recomputes (with skip_zero_grad): "tiles", the whole tiles holding an
    # argmax (the paper); "cells", only the receptive field of each argmax cell, batched (same
    # gradients, not in the paper); "auto", whichever needs fewer pixels for this image.
    recompute: str = "auto"
    amp: bool = True  # bf16 autocast (CUDA only; CPU runs in the parameters' dtype)
    channels_last: bool = True
    prefetch_workers: int = 2
    prefetch_depth: int = 4

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise StreamingError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {self.recompute!r}")


def default_tile_px(device: torch.device) -> int:
    """The paper's tile size: 3072 px on a GPU with >= 32 GB, 2048 px on smaller GPUs, small on CPU."""
    if device.type != "cuda":
        return TILE_PX_CPU
    total = torch.cuda.get_device_properties(device).total_memory
    return TILE_PX_GPU_LARGE if total >= GPU_LARGE_BYTES else TILE_PX_GPU_SMALL


@dataclass(frozen=True)
class Span:
    """One tile along one axis: input pixels ``[start_px, stop_px)``, owned output cells ``[cell0, cell1)``.

    ``stride`` is the trunk's output stride in input pixels.
    """

    start_px: int
    stop_px: int
    cell0: int
    cell1: int
    stride: int

    @property
    def crop0(self) -> int:
        """Index of ``cell0`` in the tile's own output."""
        return self.cell0 - self.start_px // self.stride

    @property
    def cells(self) -> int:
        return self.cell1 - self.cell0


@dataclass(frozen=True)
class Tile:
    index: int
    y: Span
    x: Span

    @property
    def shape_px(self) -> tuple[int, int]:
        return self.y.stop_px - self.y.start_px, self.x.stop_px - self.x.start_px

    def crop(self, out: torch.Tensor) -> torch.Tensor:
        """The owned cells of this tile's trunk output ``(n, c, h', w')``."""
        y, x = self.y, self.x
        return out[:, :, y.crop0 : y.crop0 + y.cells, x.crop0 : x.crop0 + x.cells]


@dataclass(frozen=True)
class TilePlan:
    """Tiles in row-major order covering a ``height`` x ``width`` canvas and its ``out_h`` x ``out_w`` map."""

    height: int
    width: int
    out_h: int
    out_w: int
    tile_px: int
    geometry: TrunkGeometry
    tiles: tuple[Tile, ...]

    def tile_of_cell(self, row: int, col: int) -> int:
        """Index of the tile owning output cell ``(row, col)``."""
        for tile in self.tiles:
            if tile.y.cell0 <= row < tile.y.cell1 and tile.x.cell0 <= col < tile.x.cell1:
                return tile.index
        raise StreamingError(f"cell ({row}, {col}) outside the {self.out_h}x{self.out_w} output")


def _plan_axis(axis: AxisGeometry, size_px: int, tile_px: int) -> list[Span]:
    n_out = axis.out_size(size_px)
    if n_out < 1:
        raise StreamingError(f"an image of {size_px} px is smaller than the trunk's input window")
    spans: list[Span] = []
    start, owned = 0, 0
    while True:
        stop = min(start + tile_px, size_px)
        # An interior tile owns the cells whose receptive field ends inside it; the last tile owns
        # the rest, since there the tile border is the image border (same padding as the image).
        end = n_out if stop == size_px else min(n_out, (stop - axis.rf + axis.pad) // axis.stride + 1)
        if end <= owned:
            raise StreamingError(
                f"tile of {tile_px} px too small for a receptive field of {axis.rf} px "
                f"(stride {axis.stride}, padding {axis.pad}): no exact output cell left"
            )
        spans.append(Span(start, stop, owned, end, axis.stride))
        if end == n_out:
            return spans
        owned = end
        # The next tile starts on the stride grid at or before the first input pixel of its first
        # owned cell, so that cell's receptive field starts inside it.
        start = max(0, owned - -(-axis.pad // axis.stride)) * axis.stride


def _cell_span(axis: AxisGeometry, size_px: int, cell: int) -> Span:
    """The smallest stride-aligned window in which output ``cell`` is exact (its receptive field)."""
    start = max(0, axis.first_input_px(cell)) // axis.stride * axis.stride
    stop = min(size_px, axis.last_input_px(cell) + 1)
    return Span(start, stop, cell, cell + 1, axis.stride)


def plan_tiles(geometry: TrunkGeometry, height: int, width: int, tile_px: int) -> TilePlan:
    """Split a ``height`` x ``width`` canvas into stride-aligned tiles of at most ``tile_px`` px."""
    if height < 1 or width < 1:
        raise StreamingError(f"empty canvas {height}x{width}")
    if tile_px < 1:
        raise StreamingError(f"tile_px must be positive, got {tile_px}")
    rows = _plan_axis(geometry.y, height, tile_px)
    cols = _plan_axis(geometry.x, width, tile_px)
    tiles = tuple(Tile(i * len(cols) + j, y, x) for i, y in enumerate(rows) for j, x in enumerate(cols))
    out_h, out_w = geometry.out_shape(height, width)
    return TilePlan(height, width, out_h, out_w, tile_px, geometry, tiles)


@dataclass
class StreamStats:
    """What one streamed pass or training step did. Times in seconds (CUDA synchronised)."""

    tiles_total: int = 0
    tiles_white: int = 0  # source returned None
    forward_computed: int = 0  # trunk evaluations in the forward pass (white cache misses included)
    tiles_backprop: int = 0  # tiles whose feature gradient was non-zero
    backward_computed: int = 0  # trunk recomputations with autograd (a shared white backward counts once)
    forward_px: int = 0  # input pixels pushed through the trunk in the forward pass
    backward_px: int = 0  # input pixels recomputed with autograd in the backward pass
    cells_backprop: int = 0  # argmax cells recomputed through their receptive field
    recompute: str = ""  # "tiles" or "cells": what this step's backward recomputed
    forward_s: float = 0.0
    backward_s: float = 0.0
    wait_s: float = 0.0  # time the compute loop waited for the prefetcher
    backprop_tiles: list[int] = field(default_factory=list)  # indices of the tiles with non-zero gradient


@dataclass
class ForwardResult:
    """Global-max-pooled streamed forward pass.

    ``argmax_cell[c]`` is the (row, col) output cell holding channel ``c``'s maximum (first in
    row-major order on ties), ``argmax_tile[c]`` the tile owning it; ``white`` flags the tiles the
    source reported all white.
    """

    logits: torch.Tensor  # (1, num_classes)
    feature_max: torch.Tensor  # (channels,)
    argmax_cell: torch.Tensor  # (channels, 2) int64
    argmax_tile: torch.Tensor  # (channels,) int64
    white: np.ndarray  # (tiles,) bool
    plan: TilePlan
    stats: StreamStats


@dataclass
class CamResult:
    """Class-activation map of a streamed image and where its cells lie on the canvas.

    Cell ``(r, c)`` of ``scores`` is centred on canvas pixel
    ``(origin_px[0] + r * stride_px[0], origin_px[1] + c * stride_px[1])`` (the centre of its
    receptive field, in the source's own pixels).
    """

    scores: torch.Tensor  # (num_classes, out_h, out_w): sigmoid (1 class) or softmax over classes
    logit_map: torch.Tensor  # (num_classes, out_h, out_w): the head applied at every cell
    logits: torch.Tensor  # (1, num_classes): the global-max-pooled prediction
    stride_px: tuple[int, int]
    origin_px: tuple[float, float]
    rf_px: tuple[int, int]
    stats: StreamStats

    def cell_center_px(self, row: int, col: int) -> tuple[float, float]:
        return self.origin_px[0] + row * self.stride_px[0], self.origin_px[1] + col * self.stride_px[1]


class _Engine:
    """One model + source + config: the tile loop shared by every public entry point."""

    def __init__(self, model: ESCNNModel, source: TileSource, cfg: StreamingConfig) -> None:
        params = list(model.trunk.parameters())
        if not params:
            raise StreamingError("the trunk has no parameters")
        self.model, self.source, self.cfg = model, source, cfg
        self.device = params[0].device
        self.dtype = params[0].dtype
        self.amp = cfg.amp and self.device.type == "cuda"
        self.input_dtype = torch.float32 if self.amp else self.dtype
        tile_px = cfg.tile_px if cfg.tile_px is not None else default_tile_px(self.device)
        try:
            height, width = int(source.height), int(source.width)
        except (AttributeError, TypeError) as exc:
            raise StreamingError(f"{type(source).__name__} is not a TileSource (height/width)") from exc
        self.plan = plan_tiles(model.geometry, height, width, tile_px)
        self.white_out: dict[tuple[int, int], torch.Tensor] = {}
        self.stats = StreamStats(tiles_total=len(self.plan.tiles))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _load(self, tile: Tile) -> torch.Tensor | None:
        """Producer side: the tile's pixels as a uint8 tensor (pinned on CUDA), or None when white."""
        h, w = tile.shape_px
        window = self.source.read(tile.y.start_px, tile.x.start_px, h, w)
        if window is None:
            return None
        if window.shape != (h, w, 3) or window.dtype != np.uint8:
            raise StreamingError(
                f"source returned {window.shape} {window.dtype} for a {h}x{w} window; expected uint8 RGB"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(window))
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def _tiles(self, tiles: Sequence[Tile]) -> Iterator[tuple[Tile, torch.Tensor | None]]:
        """Tiles with their pixels, read ahead in background threads; counts the time spent waiting."""
        loaded = prefetch(tiles, self._load, self.cfg.prefetch_workers, self.cfg.prefetch_depth)
        for tile in tiles:
            t0 = time.perf_counter()
            pixels = next(loaded)
            self.stats.wait_s += time.perf_counter() - t0
            yield tile, pixels

    def _input(self, pixels: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        if pixels is None:
            pixels = torch.full((*shape, 3), WHITE, dtype=torch.uint8, device=self.device)
        return window_to_input(pixels, self.device, self.input_dtype, self.cfg.channels_last)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.trunk(x)

    def _forward_tile(self, pixels: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        self.stats.forward_computed += 1
        self.stats.forward_px += shape[0] * shape[1]
        return self._trunk(self._input(pixels, shape))

    def forward(self, on_tile: Callable[[Tile, torch.Tensor], None] | None = None) -> ForwardResult:
        """Stream the trunk over all tiles without autograd, reducing each tile to its local maxima."""
        plan, cfg = self.plan, self.cfg
        acc_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        best = best_pos = best_tile = None
        white = np.zeros(len(plan.tiles), dtype=bool)
        self._sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for tile, pixels in self._tiles(plan.tiles):
                white[tile.index] = pixels is None
                if pixels is None and cfg.skip_white:
                    out = self.white_out.get(tile.shape_px)
                    if out is None:
                        out = self.white_out[tile.shape_px] = self._forward_tile(None, tile.shape_px)
                else:
                    out = self._forward_tile(pixels, tile.shape_px)
                cells = tile.crop(out).to(acc_dtype)
                vals, idx = cells.flatten(2)[0].max(dim=1)
                pos = (idx // tile.x.cells + tile.y.cell0) * plan.out_w + idx % tile.x.cells + tile.x.cell0
                if best is None:
                    best, best_pos = vals, pos
                    best_tile = torch.full_like(pos, tile.index)
                else:
                    # Ties go to the first cell in row-major order, as in global_max_pool.
                    better = (vals > best) | ((vals == best) & (pos < best_pos))
                    best = torch.where(better, vals, best)
                    best_pos = torch.where(better, pos, best_pos)
                    best_tile = torch.where(better, tile.index, best_tile)
                if on_tile is not None:
                    on_tile(tile, cells)
            head_dtype = self.model.head.weight.dtype
            logits = self.model.head(best.to(head_dtype).unsqueeze(0))
        self._sync()
        self.stats.forward_s += time.perf_counter() - t0
        self.stats.tiles_white = int(white.sum())
        cell = torch.stack([best_pos // plan.out_w, best_pos % plan.out_w], dim=1)
        return ForwardResult(logits, best, cell, best_tile, white, plan, self.stats)

    def _backprop(self, x: torch.Tensor, tile: Tile | None, grad: torch.Tensor) -> None:
        """Recompute the trunk on ``x`` with autograd and accumulate ``.grad`` for ``grad`` on its output
        (cropped to ``tile``'s owned cells when given)."""
        params = [p for p in self.model.trunk.parameters() if p.requires_grad]
        with torch.enable_grad():
            out = self._trunk(x)
            if tile is not None:
                out = tile.crop(out)
        grads = torch.autograd.grad(out, params, grad.to(out.dtype), allow_unused=True)
        self.stats.backward_computed += 1
        self.stats.backward_px += x.shape[0] * x.shape[2] * x.shape[3]
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g.to(p.dtype)
            else:
                p.grad.add_(g)

    def cell_windows(self, cells: Sequence[tuple[int, int]]) -> list[Tile]:
        """For each output cell, the smallest stride-aligned window holding its receptive field: the
        cell is exact there, as in a tile. ``index`` is the cell's position in ``cells``."""
        plan, geo = self.plan, self.plan.geometry
        return [
            Tile(i, _cell_span(geo.y, plan.height, r), _cell_span(geo.x, plan.width, c))
            for i, (r, c) in enumerate(cells)
        ]

    def backward_cells(self, windows: Sequence[Tile], cell_grads: torch.Tensor) -> None:
        """Backward through single output cells, recomputing only their windows (:meth:`cell_windows`).

        ``cell_grads[w.index]`` is the loss gradient ``(c,)`` at the cell of window ``w``; windows of
        one layout are batched up to one tile's worth of pixels.
        """
        plan, geo = self.plan, self.plan.geometry
        # Batch windows with the same shape and the same position of their cell.
        by_layout: dict[tuple[int, int, int, int], list[Tile]] = {}
        for w in windows:
            by_layout.setdefault((*w.shape_px, w.y.crop0, w.x.crop0), []).append(w)
        batches: list[list[Tile]] = []
        for (h, w, _, _), group in by_layout.items():
            per_batch = max(1, (plan.tile_px * plan.tile_px) // (h * w))
            batches += [group[i : i + per_batch] for i in range(0, len(group), per_batch)]
        self.stats.cells_backprop += len(windows)
        self._sync()
        t0 = time.perf_counter()
        ordered = [w for batch in batches for w in batch]
        # One gather into batch order, so that each batch's gradients are a slice (no per-batch syncs).
        grads = cell_grads[torch.tensor([w.index for w in ordered], device=cell_grads.device)]
        loaded = self._tiles(ordered)
        done = 0
        for batch in batches:
            pixels = itertools.islice(loaded, len(batch))
            x = torch.cat([self._input(window, tile.shape_px) for tile, window in pixels])
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out_h, out_w = geo.out_shape(*batch[0].shape_px)
            grad = grads.new_zeros((len(batch), grads.shape[1], out_h, out_w))
            grad[:, :, batch[0].y.crop0, batch[0].x.crop0] = grads[done : done + len(batch)]
            done += len(batch)
            self._backprop(x, None, grad)
        self._sync()
        self.stats.backward_s += time.perf_counter() - t0

    def backward(
        self,
        tiles: Sequence[Tile],
        grad_of: Callable[[Tile], torch.Tensor],
        white: np.ndarray | None = None,
    ) -> None:
        """Recompute ``tiles`` with autograd and accumulate parameter gradients into ``.grad``.

        ``grad_of(tile)`` is the loss gradient w.r.t. the tile's owned cells ``(1, c, h, w)``.
        Tiles flagged in ``white`` are not read again (when skipping white tiles).
        """
        skip_white = self.cfg.skip_white
        white_grads: dict[tuple[int, int], torch.Tensor] = {}
        backprop = self._backprop

        def add_white(tile: Tile, grad: torch.Tensor) -> None:
            # A white tile's gradient only depends on its shape and its feature gradient, linearly:
            # all white tiles of one shape share a single backward of their summed gradients.
            shape = tile.shape_px
            if shape not in white_grads:
                out_h, out_w = self.plan.geometry.out_shape(*shape)
                white_grads[shape] = grad.new_zeros((1, grad.shape[1], out_h, out_w))
            tile.crop(white_grads[shape]).add_(grad)

        self._sync()
        t0 = time.perf_counter()
        to_read = []
        for tile in tiles:
            if skip_white and white is not None and white[tile.index]:
                add_white(tile, grad_of(tile))
            else:
                to_read.append(tile)
        for tile, pixels in self._tiles(to_read):
            if pixels is None and skip_white:
                add_white(tile, grad_of(tile))
            else:
                backprop(self._input(pixels, tile.shape_px), tile, grad_of(tile))
        for shape, grad in white_grads.items():
            backprop(self._input(None, shape), None, grad)
        self._sync()
        self.stats.backward_s += time.perf_counter() - t0


def _check_model(model: ESCNNModel) -> None:
    if not isinstance(model, ESCNNModel):
        raise StreamingError(f"expected an ESCNNModel, got {type(model).__name__}")


def stream_forward(
    model: ESCNNModel, source: TileSource, cfg: StreamingConfig | None = None
) -> ForwardResult:
    """Prediction of ``model`` on the whole canvas of ``source`` (global max pooling), tile by tile."""
    _check_model(model)
    return _Engine(model, source, cfg or StreamingConfig()).forward()


def stream_train_step(
    model: ESCNNModel,
    source: TileSource,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: StreamingConfig | None = None,
) -> tuple[float, StreamStats]:
    """Forward + exact backward of ``loss_fn(model(image), target)``; gradients accumulate in ``.grad``.

    Nothing is zeroed or stepped: call ``optimizer.zero_grad()`` before and ``optimizer.step()``
    (after any gradient all-reduce) yourself. Returns the loss value and what the step did.
    """
    _check_model(model)
    engine = _Engine(model, source, cfg or StreamingConfig())
    fwd = engine.forward()
    pooled = fwd.feature_max.to(model.head.weight.dtype).detach().requires_grad_(True)
    loss = loss_fn(model.head(pooled.unsqueeze(0)), target)
    loss.backward()
    dpooled = pooled.grad.to(fwd.feature_max.dtype)

    plan = engine.plan
    owner = fwd.argmax_tile.cpu().numpy()
    nonzero = (dpooled != 0).cpu().numpy()
    # The feature gradient of a tile is dpooled[c] at channel c's argmax cell for the channels it
    # owns, zero elsewhere: its count of non-zeros is the count of such channels with dpooled != 0.
    hot = np.zeros(len(plan.tiles), dtype=bool)
    hot[owner[nonzero]] = True
    engine.stats.tiles_backprop = int(hot.sum())
    engine.stats.backprop_tiles = [int(i) for i in np.flatnonzero(hot)]
    needed = [t for t in plan.tiles if hot[t.index] or not engine.cfg.skip_zero_grad]
    channels = torch.arange(dpooled.shape[0], device=dpooled.device)

    def grad_of(tile: Tile) -> torch.Tensor:
        grad = dpooled.new_zeros((1, dpooled.shape[0], tile.y.cells, tile.x.cells))
        mine = fwd.argmax_tile == tile.index
        rows = fwd.argmax_cell[mine, 0] - tile.y.cell0
        cols = fwd.argmax_cell[mine, 1] - tile.x.cell0
        grad[0, channels[mine], rows, cols] = dpooled[mine]
        return grad

    recompute = engine.cfg.recompute if engine.cfg.skip_zero_grad else "tiles"
    if recompute != "tiles":
        hot_channels = torch.nonzero(dpooled != 0)[:, 0]
        cells, owner_of = torch.unique(fwd.argmax_cell[hot_channels], dim=0, return_inverse=True)
        windows = engine.cell_windows([(int(r), int(c)) for r, c in cells.tolist()])
        if recompute == "auto":
            # Pixels each way; hot white tiles of one shape share a single backward.
            shared = {t.index for t in needed if engine.cfg.skip_white and fwd.white[t.index]}
            white_shapes = {t.shape_px for t in needed if t.index in shared}
            tiles_px = sum(h * w for h, w in white_shapes)
            tiles_px += sum(t.shape_px[0] * t.shape_px[1] for t in needed if t.index not in shared)
            cells_px = sum(w.shape_px[0] * w.shape_px[1] for w in windows)
            recompute = "cells" if cells_px < tiles_px else "tiles"
    engine.stats.recompute = recompute
    if recompute == "cells":
        cell_grads = dpooled.new_zeros((len(windows), dpooled.shape[0]))
        cell_grads[owner_of, hot_channels] = dpooled[hot_channels]
        engine.backward_cells(windows, cell_grads)
    else:
        engine.backward(needed, grad_of, fwd.white)
    return float(loss.detach()), engine.stats


def stream_backward(
    model: ESCNNModel, source: TileSource, feature_grad: torch.Tensor, cfg: StreamingConfig | None = None
) -> StreamStats:
    """Accumulate into the trunk's ``.grad`` the gradient for a dense feature-map gradient.

    ``feature_grad`` is ``(1, c, out_h, out_w)``, the loss gradient w.r.t. the whole trunk output
    (for heads other than global max pooling, or to check exactness). Tiles whose slice is all
    zero are skipped when ``cfg.skip_zero_grad``.
    """
    _check_model(model)
    engine = _Engine(model, source, cfg or StreamingConfig())
    plan = engine.plan
    if feature_grad.ndim != 4 or tuple(feature_grad.shape[2:]) != (plan.out_h, plan.out_w):
        raise StreamingError(
            f"feature_grad has shape {tuple(feature_grad.shape)}; "
            f"the trunk output is {plan.out_h}x{plan.out_w}"
        )
    grad = feature_grad.to(engine.device)

    def grad_of(tile: Tile) -> torch.Tensor:
        return grad[:, :, tile.y.cell0 : tile.y.cell1, tile.x.cell0 : tile.x.cell1]

    hot = [t for t in plan.tiles if torch.count_nonzero(grad_of(t)) > 0]
    engine.stats.tiles_backprop = len(hot)
    engine.stats.backprop_tiles = [t.index for t in hot]
    engine.backward(hot if engine.cfg.skip_zero_grad else list(plan.tiles), grad_of)
    return engine.stats


def stream_features(
    model: ESCNNModel, source: TileSource, cfg: StreamingConfig | None = None
) -> torch.Tensor:
    """The whole stitched trunk output ``(1, c, out_h, out_w)``; only for maps that fit in memory."""
    _check_model(model)
    engine = _Engine(model, source, cfg or StreamingConfig())
    plan = engine.plan
    maps: list[torch.Tensor] = []

    def keep(tile: Tile, cells: torch.Tensor) -> None:
        if not maps:
            maps.append(cells.new_empty((1, cells.shape[1], plan.out_h, plan.out_w)))
        maps[0][:, :, tile.y.cell0 : tile.y.cell1, tile.x.cell0 : tile.x.cell1] = cells

    engine.forward(keep)
    return maps[0]


def stream_cam(model: ESCNNModel, source: TileSource, cfg: StreamingConfig | None = None) -> CamResult:
    """Class-activation map: the head applied at every cell of the stitched feature map (paper's CAM).

    Each tile's owned cells go through the head as a 1x1 convolution, so only the
    ``num_classes``-channel map is kept. Scores are sigmoid for one class, softmax otherwise.
    """
    _check_model(model)
    engine = _Engine(model, source, cfg or StreamingConfig())
    plan = engine.plan
    weight = model.head.weight.detach()
    bias = model.head.bias.detach() if model.head.bias is not None else None
    logit_map = weight.new_empty((weight.shape[0], plan.out_h, plan.out_w))

    def project(tile: Tile, cells: torch.Tensor) -> None:
        w = weight.to(cells.dtype)[:, :, None, None]
        b = bias.to(cells.dtype) if bias is not None else None
        logit_map[:, tile.y.cell0 : tile.y.cell1, tile.x.cell0 : tile.x.cell1] = F.conv2d(cells, w, b)[0]

    fwd = engine.forward(project)
    scores = torch.sigmoid(logit_map) if weight.shape[0] == 1 else torch.softmax(logit_map, dim=0)
    geo = plan.geometry
    return CamResult(
        scores=scores.cpu(),
        logit_map=logit_map.cpu(),
        logits=fwd.logits.cpu(),
        stride_px=(geo.y.stride, geo.x.stride),
        origin_px=(geo.y.center_px(0), geo.x.center_px(0)),
        rf_px=(geo.y.rf, geo.x.rf),
        stats=engine.stats,
    )
