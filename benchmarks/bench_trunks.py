"""CPU cost of the classifier trunks side by side (issue #15): forward + backward of one square tile.

Per backbone: parameters, output stride, receptive field, and the seconds of a forward pass and of a
forward + backward pass (sum of the trunk's output as the loss) on a ``--tile-px`` RGB tile, float32,
the median of ``--repeats`` runs after one warm-up, all in one process with the same thread count.

    python benchmarks/bench_trunks.py [--tile-px 2048] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from lnassist.escnn.model import build_model  # noqa: E402


def measure(backbone: str, tile_px: int, repeats: int, antialias: bool) -> dict:
    model = build_model(backbone, antialias=antialias)
    x = torch.randn(1, 3, tile_px, tile_px, generator=torch.Generator().manual_seed(0))
    forward, both = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            model.trunk(x)
        middle = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model.trunk(x).sum().backward()
        end = time.perf_counter()
        if i:  # the first run warms up allocators and kernels
            forward.append(middle - start)
            both.append(end - middle)
    geometry = model.geometry
    return {
        "backbone": backbone,
        "antialias": antialias,
        "parameters": sum(p.numel() for p in model.trunk.parameters()),
        "stride_px": geometry.y.stride,
        "receptive_field_px": geometry.y.rf,
        "forward_s": round(statistics.median(forward), 3),
        "forward_backward_s": round(statistics.median(both), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="tiny,narrow,resnet18")
    parser.add_argument("--tile-px", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results" / "trunks_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [
        measure(name, args.tile_px, args.repeats, antialias)
        for name in args.backbones.split(",")
        for antialias in (False, True)
    ]
    tiny = {r["antialias"]: r for r in rows if r["backbone"] == "tiny"}
    for r in rows:
        if r["antialias"] in tiny:
            r["forward_backward_vs_tiny"] = round(
                r["forward_backward_s"] / tiny[r["antialias"]]["forward_backward_s"], 2
            )
        print(json.dumps(r))
    result = {
        "command": "python benchmarks/bench_trunks.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "tile_px": args.tile_px,
        "repeats": args.repeats,
        "trunks": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
