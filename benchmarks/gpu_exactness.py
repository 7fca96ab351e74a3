"""ESCNN exactness on the GPU: streamed gradients vs whole-image backprop, on CUDA, same code as on CPU.

The CPU tests prove exactness in float64; this script checks that nothing device-specific (cuDNN
algorithms, channels_last, asynchronous copies, bf16 autocast) breaks it on a GPU. It reports the
worst relative L2 error over all parameter gradients for float64, float32 (channels_last) and bf16
autocast (against the float32 whole-image reference), and writes them to OUT/gpu_exactness.json.

    python benchmarks/gpu_exactness.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_escnn_canvas import seeded_init  # noqa: E402

from lnassist.escnn.model import build_model, window_to_input  # noqa: E402
from lnassist.escnn.sources import ArraySource  # noqa: E402
from lnassist.escnn.streaming import StreamingConfig, stream_forward, stream_train_step  # noqa: E402


def texture_with_white(height: int, width: int, seed: int) -> np.ndarray:
    """Noise with a white band, so white skipping takes part in the check."""
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image[:, : width // 4] = 255
    return image


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().cpu()
            for n, p in model.named_parameters()}


def max_rel_err(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(float((got[n] - r).norm() / r.norm()) for n, r in ref.items() if float(r.norm()) > 0)


def check(backbone: str, dtype: torch.dtype, amp: bool, image: np.ndarray, tile_px: int,
          device: torch.device) -> dict:
    calibration = image[:512, -512:]  # a tissue (non-white) corner
    model = seeded_init(build_model(backbone, num_classes=2), seed=0, calibration=calibration).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    target = torch.tensor([1], device=device)
    ref_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    model = model.to(ref_dtype)

    model.zero_grad(set_to_none=True)
    x = window_to_input(image, device=device, dtype=ref_dtype)
    ref_loss = loss_fn(model(x), target)
    ref_loss.backward()
    reference = grads(model)

    cfg = StreamingConfig(tile_px=tile_px, amp=amp, channels_last=True)
    # Where each channel's global maximum sits, whole image vs streamed: GMP routes the whole gradient
    # there, so rounding that moves a near-tied maximum changes the gradient by far more than rounding.
    with torch.no_grad():
        feature_map = model.features(x)[0]
        features = feature_map.flatten(1)
        whole_argmax = features.argmax(dim=1).cpu()
        second = features.topk(2, dim=1).values
        tie_gap = (second[:, 0] - second[:, 1]) / second[:, 0].abs().clamp_min(1e-30)
        streamed = stream_forward(model, ArraySource(image), cfg)
    streamed_argmax = (streamed.argmax_cell[:, 0] * feature_map.shape[-1] + streamed.argmax_cell[:, 1]).cpu()
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    loss, stats = stream_train_step(model, ArraySource(image), target, loss_fn, cfg)
    return {
        "backbone": backbone,
        "dtype": str(dtype).removeprefix("torch."),
        "amp_bf16": amp,
        "image_px": list(image.shape[:2]),
        "tile_px": tile_px,
        "loss_streamed": loss,
        "loss_whole": float(ref_loss),
        "max_rel_grad_err": max_rel_err(grads(model), reference),
        "argmax_agreement": float((whole_argmax == streamed_argmax).float().mean()),
        "channels_with_relative_top2_gap_below_1e-3": int((tie_gap < 1e-3).sum()),
        "tiles_total": stats.tiles_total,
        "tiles_white": stats.tiles_white,
        "tiles_backprop": stats.tiles_backprop,
        "recompute": stats.recompute,
        "step_s": round(time.perf_counter() - started, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    parser.add_argument("--no-tf32", action="store_true",
                        help="true float32 convolutions (PyTorch lets cuDNN use TF32 for them by default)")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    if args.dry_run:
        device, image, tiles = torch.device("cpu"), texture_with_white(700, 640, seed=1), (512, 640)
    elif torch.cuda.is_available():
        device, image, tiles = torch.device("cuda"), texture_with_white(1400, 1300, seed=1), (512, 640)
    else:
        print("gpu_exactness: CUDA is not available; run this on a GPU machine", file=sys.stderr)
        return 2
    runs = [
        check("resnet18", torch.float64, False, image, tiles[0], device),
        check("resnet18", torch.float32, False, image, tiles[0], device),
        check("resnet18", torch.bfloat16, True, image, tiles[0], device),
        check("resnet50", torch.float64, False, image, tiles[1], device),
        check("resnet50", torch.float32, False, image, tiles[1], device),
    ]
    report = {
        "command": "python benchmarks/gpu_exactness.py --out DIR",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "tf32": not args.no_tf32,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_exactness.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
