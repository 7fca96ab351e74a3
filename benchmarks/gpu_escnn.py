"""GPU benchmark of ESCNN training on synthetic lymph-node images at 5x, 10x and 20x.

For each configuration: training images/min (streamed forward + recompute-backward + AdamW step,
after a warm-up step), peak GPU memory (``torch.cuda.max_memory_allocated``), achieved TFLOP/s
(FLOPs of the pixels actually pushed through the trunk, per-pixel FLOPs counted by
``torch.utils.flop_counter`` on a meta-device copy of the trunk) and tile statistics.
Modes: ``escnn_auto`` (the engine's default: ESCNN skipping, and the backward recomputes either
the argmax tiles or only the receptive fields of the argmax cells, whichever is fewer pixels),
``escnn`` (the paper's ESCNN: argmax tiles recomputed whole) and ``stream`` (plain streaming, no
skipping) for the ratios.
ResNet50, bf16 autocast, channels_last, 3072 px tiles (the paper's size for >= 32 GB GPUs).

Canvases are rendered window by window in the prefetch threads (benchmarks/bench_escnn_canvas.py)
and cached in host RAM after the first pass. A time budget guard skips what no longer fits and
the JSON is rewritten after every configuration, so a cut-off run still leaves results.

    python benchmarks/gpu_escnn.py --out DIR                          # the H100 run
    python benchmarks/gpu_escnn.py --out /tmp/x --device cpu --scale small   # dry run on a CPU

Needs only torch, torchvision, numpy and opencv plus this repository (found relative to this file).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# Paper figures (V100 32 GB) to compare with.
PAPER = {"escnn_20x_images_per_min": 0.912, "escnn_5x_images_per_min": 3.48,
         "stream_5x_images_per_min": 1.49, "memory_gb": "8-9"}
# Canvas sides: the paper's largest 20x LN image is 75,000^2 px; 10x and 5x are the same LN downscaled.
SCALES = {
    "full": {"sides": {"5x": 18750, "10x": 37500, "20x": 75000}, "tile_px": 3072, "backbone": "resnet50"},
    "small": {"sides": {"5x": 768, "10x": 1024, "20x": 1536}, "tile_px": 512, "backbone": "tiny"},
}
TISSUE_FRACTION = 0.5  # an LN-shaped blob covering half the canvas, white outside
HOST_CACHE_BYTES = 64 * 1024**3


def fail(message: str) -> None:
    print(f"gpu_escnn: error: {message}", file=sys.stderr)
    sys.exit(2)


def count_flops(trunk, tile_px: int) -> tuple[float, float]:
    """(forward, forward + parameter-backward) FLOPs per input pixel of a ``tile_px`` square tile."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(trunk).to("meta")
    x = torch.empty(1, 3, tile_px, tile_px, device="meta")
    with FlopCounterMode(display=False) as fwd:
        meta(x)
    with FlopCounterMode(display=False) as both:
        out = meta(x)
        out.backward(torch.ones_like(out))
    px = tile_px * tile_px
    return fwd.get_total_flops() / px, both.get_total_flops() / px


def run_config(name: str, mode: str, side: int, args, device, flops_px, deadline: float, est_s: float | None,
               sources: dict):
    import torch
    from bench_escnn_canvas import SyntheticLNSource, seeded_init

    from lnassist.escnn.model import build_model
    from lnassist.escnn.streaming import StreamingConfig, stream_train_step

    result = {"name": name, "mode": mode, "side_px": side, "tile_px": args.tile_px, "backbone": args.backbone}
    if est_s is not None and time.monotonic() + 2.5 * est_s > deadline:
        return {**result, "skipped": f"time budget (estimated warm-up + step {2.5 * est_s:.0f} s)"}
    t_setup = time.perf_counter()
    if side not in sources:  # one canvas per size, shared by the modes (its render cache too)
        sources[side] = SyntheticLNSource(side, side, TISSUE_FRACTION, seed=1, cache=device.type == "cuda",
                                          cache_bytes=HOST_CACHE_BYTES)
    source = sources[side]
    calibration = SyntheticLNSource(512, 512, 0.5, seed=3).read(0, 0, 512, 512)  # tissue and white
    model = seeded_init(build_model(args.backbone, num_classes=2), seed=0, calibration=calibration).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=0.01)
    escnn = mode.startswith("escnn")
    cfg = StreamingConfig(tile_px=args.tile_px, skip_white=escnn, skip_zero_grad=escnn,
                          recompute="auto" if mode == "escnn_auto" else "tiles", amp=True, channels_last=True,
                          prefetch_workers=args.workers, prefetch_depth=args.depth)
    loss_fn = torch.nn.CrossEntropyLoss()
    target = torch.tensor([1], device=device)
    result["tissue_fraction"] = round(source.tissue_fraction, 4)
    result["setup_s"] = round(time.perf_counter() - t_setup, 2)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, stats = stream_train_step(model, source, target, loss_fn, cfg)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, loss, stats

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warm_s, _, _ = step()  # renders and caches the canvas, autotunes kernels
    result["warmup_s"] = round(warm_s, 2)
    times, stats, loss = [], None, None
    while len(times) < args.steps:
        last = times[-1] if times else warm_s
        if times and time.monotonic() + 1.3 * last > deadline:
            break
        dt, loss, stats = step()
        times.append(dt)
    if device.type == "cuda":
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
        result["peak_gpu_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1024**3, 2)
    mean_s = sum(times) / len(times)
    fwd_px, both_px = flops_px
    flops = stats.forward_px * fwd_px + stats.backward_px * both_px
    tissue_px = source.tissue_fraction * side * side
    result.update({
        "steps": len(times), "step_s": [round(t, 3) for t in times], "mean_step_s": round(mean_s, 3),
        "images_per_min": round(60.0 / mean_s, 3), "loss": round(loss, 5),
        "tiles_total": stats.tiles_total, "tiles_white": stats.tiles_white,
        "forward_computed": stats.forward_computed, "tiles_backprop": stats.tiles_backprop,
        "backward_computed": stats.backward_computed, "cells_backprop": stats.cells_backprop,
        "recompute": stats.recompute,
        "forward_mpx": round(stats.forward_px / 1e6, 1), "backward_mpx": round(stats.backward_px / 1e6, 1),
        "forward_s": round(stats.forward_s, 3),
        "backward_s": round(stats.backward_s, 3), "prefetch_wait_s": round(stats.wait_s, 3),
        "tflop_per_step": round(flops / 1e12, 3), "achieved_tflops": round(flops / mean_s / 1e12, 3),
        "tissue_mpx_per_s": round(tissue_px / mean_s / 1e6, 1),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ESCNN training throughput on synthetic LN images")
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_escnn.json")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--scale", default="full", choices=tuple(SCALES))
    parser.add_argument("--tile-px", type=int, help="default: 3072 (full) / 512 (small)")
    parser.add_argument("--backbone", help="default: resnet50 (full) / tiny (small)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration after warm-up")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="no step is started that is estimated to end after this many seconds")
    parser.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--depth", type=int, default=24, help="prefetch queue depth (tiles)")
    parser.add_argument("--dry-run", action="store_true", help="same as --device cpu --scale small")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.scale = "cpu", "small"
    scale = SCALES[args.scale]
    args.tile_px = args.tile_px or scale["tile_px"]
    args.backbone = args.backbone or scale["backbone"]
    start = time.monotonic()
    deadline = start + args.budget_s

    import cv2
    import torch

    from lnassist.escnn.model import build_model

    cv2.setNumThreads(1)  # the prefetch threads render tiles in parallel; no nested OpenCV threads
    if args.device == "cuda":
        if not torch.cuda.is_available():
            fail(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                 "use --device cpu --scale small for a dry run")
        device = torch.device("cuda", 0)
    else:
        device = torch.device("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "gpu_escnn.json"
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
        "scale": args.scale, "backbone": args.backbone, "tile_px": args.tile_px,
        "amp": "bf16 autocast (CUDA)",
        "channels_last": True, "tissue_fraction_target": TISSUE_FRACTION, "paper_v100": PAPER,
        "results": [],
    }
    trunk = build_model(args.backbone).trunk
    flops_px = count_flops(trunk, args.tile_px)
    report["flops_per_px"] = {"forward": flops_px[0], "forward_backward": flops_px[1]}
    sides = scale["sides"]
    # Headline first (5x also warms the GPU up); the 20x canvas stays cached in host RAM for both modes.
    plan = [("escnn_auto_5x", "escnn_auto", "5x"), ("escnn_auto_20x", "escnn_auto", "20x"),
            ("escnn_20x", "escnn", "20x"), ("stream_5x", "stream", "5x"), ("escnn_5x", "escnn", "5x"),
            ("escnn_auto_10x", "escnn_auto", "10x")]
    # Seconds per tissue megapixel of the mode measured so far, to estimate what still fits.
    cost = {"escnn_auto": None, "escnn": None, "stream": None}
    slowdown = {"escnn_auto": 1.0, "escnn": 3.0, "stream": 6.0}  # guesses until a mode is measured
    sources: dict[int, object] = {}
    for name, mode, mag in plan:
        side = sides[mag]
        known = {m: c for m, c in cost.items() if c is not None}
        est = None
        if mode in known:
            est = known[mode] * side * side * TISSUE_FRACTION / 1e6
        elif "escnn_auto" in known:
            est = known["escnn_auto"] * slowdown[mode] * side * side * TISSUE_FRACTION / 1e6
        print(f"[{time.monotonic() - start:6.1f} s] {name}: {side}^2 px", flush=True)
        try:
            res = run_config(name, mode, side, args, device, flops_px, deadline, est, sources)
        except Exception as exc:  # keep the other configurations' results
            res = {"name": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if "mean_step_s" in res:
            cost[mode] = res["mean_step_s"] / (res["tissue_fraction"] * side * side / 1e6)
        report["results"].append(res)
        report["elapsed_s"] = round(time.monotonic() - start, 1)
        out_file.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "traceback"}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    by_name = {r["name"]: r for r in report["results"] if "images_per_min" in r}
    summary = {n: {"images_per_min": r["images_per_min"], "peak_gpu_mem_gb": r.get("peak_gpu_mem_gb"),
                   "achieved_tflops": r["achieved_tflops"]} for n, r in by_name.items()}
    for a, b in [("escnn_auto_5x", "stream_5x"), ("escnn_5x", "stream_5x"), ("escnn_auto_20x", "escnn_20x")]:
        if a in by_name and b in by_name:
            summary[f"{a}_over_{b}"] = round(by_name[a]["images_per_min"] / by_name[b]["images_per_min"], 2)
    for name in ("escnn_auto_20x", "escnn_20x"):
        if name in by_name:
            summary[f"{name}_over_paper"] = round(by_name[name]["images_per_min"]
                                                  / PAPER["escnn_20x_images_per_min"], 2)
    report["summary"] = summary
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    errors = [r for r in report["results"] if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
