"""CPU benchmark of the ESCNN engine: peak memory vs image size and step time vs tissue fraction.

Side by side in one run, each configuration in a fresh subprocess (so peak RSS is its own):
``naive`` (whole image read into memory, ordinary backprop), ``stream`` (plain streaming: every tile
computed in the forward and recomputed in the backward pass), ``escnn`` (the paper's ESCNN: white
tiles skipped with the constant-tile cache, tiles without gradient skipped, argmax tiles recomputed
whole) and ``escnn_cell`` (ESCNN recomputing only the receptive field of each argmax cell, the
engine's default). The image is a synthetic LN canvas rendered window by window
(benchmarks/bench_escnn_canvas.py), never held whole except by ``naive``.
A step is: zero_grad, forward + backward, AdamW step, on the ``tiny`` backbone.

Memory: peak RSS during the measured steps minus the RSS after a warm-up step on a one-tile canvas
(so one-time library initialisation is not counted), sampled every 2 ms. Workers run with
``MALLOC_MMAP_THRESHOLD_`` fixed so that freed large buffers go back to the OS and RSS follows live
memory (glibc's adaptive threshold otherwise keeps freed tile buffers in the heap).

    python benchmarks/bench_escnn.py [--out benchmarks/results/escnn_cpu.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SIZES_PX = (1024, 2048, 4096, 8192, 16384)
NAIVE_MAX_PX = 8192  # naive backprop of the tiny net at 16384^2 needs ~10 GB: too much for this shared box
TISSUE_FRACTIONS = (0.1, 0.3, 1.0)
MEMORY_TISSUE = 0.5
TILE_PX = 512
MODES = ("naive", "stream", "escnn", "escnn_cell")
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 1024), "MALLOC_TRIM_THRESHOLD_": str(1024 * 1024)}


class PeakRss:
    """Samples the process RSS in a background thread (ru_maxrss cannot be reset between phases)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def worker(spec: dict) -> dict:
    """One configuration, one process: ``steps`` steps; time = fastest step after the first."""
    import psutil
    import torch
    from bench_escnn_canvas import SyntheticLNSource, seeded_init

    from lnassist.escnn.model import build_model, window_to_input
    from lnassist.escnn.streaming import StreamingConfig, stream_train_step

    torch.set_num_threads(spec["threads"])
    calibration = SyntheticLNSource(512, 512, 0.5, seed=3).read(0, 0, 512, 512)  # tissue and white
    model = seeded_init(build_model("tiny", num_classes=2), seed=0, calibration=calibration)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=0.01)
    source = SyntheticLNSource(spec["size"], spec["size"], spec["tissue"], seed=1)
    loss_fn = torch.nn.CrossEntropyLoss()
    target = torch.tensor([1])
    mode = spec["mode"]
    escnn = mode.startswith("escnn")
    cfg = StreamingConfig(
        tile_px=spec["tile_px"],
        skip_white=escnn,
        skip_zero_grad=escnn,
        recompute="cells" if mode == "escnn_cell" else "tiles",
        prefetch_workers=1,
        prefetch_depth=3,
    )

    def step(source) -> dict:
        opt.zero_grad(set_to_none=True)
        if mode == "naive":
            t0 = time.perf_counter()
            window = source.read(0, 0, source.height, source.width)
            x = window_to_input(window)
            del window
            read_s = time.perf_counter() - t0
            loss = loss_fn(model(x), target)
            loss.backward()
            out = {"loss": float(loss), "read_s": round(read_s, 3)}
        else:
            loss, stats = stream_train_step(model, source, target, loss_fn, cfg)
            out = {"loss": loss, "tiles_total": stats.tiles_total, "tiles_white": stats.tiles_white,
                   "forward_computed": stats.forward_computed, "tiles_backprop": stats.tiles_backprop,
                   "backward_computed": stats.backward_computed, "forward_s": round(stats.forward_s, 3),
                   "backward_s": round(stats.backward_s, 3), "wait_s": round(stats.wait_s, 3),
                   "cells_backprop": stats.cells_backprop, "forward_mpx": round(stats.forward_px / 1e6, 2),
                   "backward_mpx": round(stats.backward_px / 1e6, 2)}
        opt.step()
        return out

    step(SyntheticLNSource(spec["tile_px"], spec["tile_px"], 1.0, seed=2))  # library warm-up
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    with PeakRss() as peak:
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            last = step(source)
            times.append(time.perf_counter() - t0)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        **spec,
        "tissue_actual": round(source.tissue_fraction, 4),
        "step_s": round(min(times[1:] or times), 3),
        "step_s_all": [round(t, 3) for t in times],
        "peak_rss_increase_mb": round((peak.peak - baseline) / 2**20, 1),
        "maxrss_increase_mb": round(max(0, maxrss_after - maxrss_before) / 2**20, 1),
        **last,
    }


def run_config(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **WORKER_ENV})
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        return {**spec, "error": why}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t0, 1)
    return result


def summarize(memory: list[dict], tissue: list[dict]) -> dict:
    def pick(rows, **kv):
        return [r for r in rows if all(r.get(k) == v for k, v in kv.items()) and "error" not in r]

    out: dict = {}
    for mode in MODES:
        rows = sorted(pick(memory, mode=mode), key=lambda r: r["size"])
        if len(rows) >= 2:
            first, last = rows[0]["peak_rss_increase_mb"], rows[-1]["peak_rss_increase_mb"]
            out[f"{mode}_memory_growth"] = {
                "from_px": rows[0]["size"], "to_px": rows[-1]["size"], "from_mb": first, "to_mb": last,
                "ratio": round(last / max(first, 1e-9), 3),
            }
    for mode in MODES[1:]:
        full = pick(tissue, mode=mode, tissue=1.0)
        for frac in TISSUE_FRACTIONS[:-1]:
            rows = pick(tissue, mode=mode, tissue=frac)
            if full and rows:
                out[f"{mode}_time_tissue_{frac}_over_1.0"] = round(rows[0]["step_s"] / full[0]["step_s"], 3)
    naive_sizes = sorted(r["size"] for r in pick(memory, mode="naive"))
    if naive_sizes:
        largest = naive_sizes[-1]
        naive = pick(memory, mode="naive", size=largest)[0]
        for mode in MODES[1:]:
            rows = pick(memory, mode=mode, size=largest)
            if rows:
                out[f"{mode}_over_naive_time_{largest}px_tissue_{MEMORY_TISSUE}"] = round(
                    rows[0]["step_s"] / naive["step_s"], 3)
    for frac in TISSUE_FRACTIONS:
        naive = pick(tissue, mode="naive", tissue=frac)
        for mode in MODES[1:]:
            rows = pick(tissue, mode=mode, tissue=frac)
            if naive and rows:
                ratio = rows[0]["step_s"] / naive[0]["step_s"]
                out[f"{mode}_over_naive_time_tissue_{frac}"] = round(ratio, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "escnn_cpu.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_PX))
    parser.add_argument("--naive-max-px", type=int, default=NAIVE_MAX_PX)
    parser.add_argument("--tissue-size", type=int, default=8192, help="canvas side for the tissue sweep")
    parser.add_argument("--tile-px", type=int, default=TILE_PX)
    # One compute thread: the prefetch thread renders alongside, and oversubscribed torch threads
    # make timings on a shared 2-core box erratic.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    def spec(mode: str, size: int, tissue: float) -> dict:
        # The fastest of the steps after a warm-up step (the machine may be shared); the slowest
        # configurations get a single step.
        steps = 1 if size >= 16384 else 2 if size >= 8192 else 3
        return {"mode": mode, "size": size, "tissue": tissue, "tile_px": args.tile_px,
                "threads": args.threads, "steps": steps}

    memory, tissue = [], []
    for size in args.sizes:
        for mode in MODES:
            if mode == "naive" and size > args.naive_max_px:
                continue
            memory.append(run_config(spec(mode, size, MEMORY_TISSUE)))
            print(json.dumps(memory[-1]), flush=True)
    for frac in TISSUE_FRACTIONS:
        for mode in MODES:
            tissue.append(run_config(spec(mode, args.tissue_size, frac)))
            print(json.dumps(tissue[-1]), flush=True)

    import torch

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads},
        "backbone": "tiny",
        "tile_px": args.tile_px,
        "memory_tissue_fraction": MEMORY_TISSUE,
        "memory_vs_size": memory,
        "time_vs_tissue": tissue,
        "summary": summarize(memory, tissue),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
