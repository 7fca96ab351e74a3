"""Receptive field, output stride and padding of a convolutional trunk, computed by walking its modules.

Per image axis, output cell ``j`` of the trunk depends on the input pixels
``[j * stride - pad, j * stride - pad + rf - 1]`` (before clipping to the image). The streaming
engine derives from this which cells of a tile are exact and so how much tiles must overlap.
Supported: ``nn.Sequential``, ``nn.Conv2d``, ``nn.MaxPool2d``/``nn.AvgPool2d`` (no ceil mode), the
fixed anti-aliasing blur (:class:`~lnassist.escnn.backbones.BlurPool2d`, a zero-padded 3x3 window),
pointwise layers (batch norm, activations, identity) and torchvision's ``BasicBlock`` and
``Bottleneck`` residual blocks; anything else is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lnassist.errors import LnassistError
from lnassist.escnn.backbones import BlurPool2d, FrozenBatchNorm2d

POINTWISE = (
    nn.BatchNorm2d,
    FrozenBatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
)


class ReceptiveFieldError(LnassistError):
    """A module whose spatial geometry is unknown or not streamable."""


@dataclass(frozen=True)
class Window1d:
    """One sliding window along one axis: extent (dilated kernel size), stride, zero padding per side."""

    extent: int
    stride: int
    pad: int

    def out_size(self, n: int) -> int:
        return (n + 2 * self.pad - self.extent) // self.stride + 1


@dataclass(frozen=True)
class AxisGeometry:
    """Geometry of a trunk along one axis, in input pixels.

    ``windows`` is the chain of sliding windows along the main path (residual shortcuts produce the
    same output size), used to compute the output size of any input size.
    """

    stride: int = 1
    pad: int = 0
    rf: int = 1
    windows: tuple[Window1d, ...] = ()

    def then(self, w: Window1d) -> AxisGeometry:
        return AxisGeometry(
            stride=self.stride * w.stride,
            pad=self.pad + w.pad * self.stride,
            rf=self.rf + (w.extent - 1) * self.stride,
            windows=(*self.windows, w),
        )

    def out_size(self, n: int) -> int:
        for w in self.windows:
            n = w.out_size(n)
        return n

    def first_input_px(self, cell: int) -> int:
        """First input pixel (unclipped) that output ``cell`` depends on."""
        return cell * self.stride - self.pad

    def last_input_px(self, cell: int) -> int:
        """Last input pixel (unclipped) that output ``cell`` depends on."""
        return cell * self.stride - self.pad + self.rf - 1

    def center_px(self, cell: int) -> float:
        """Centre of the receptive field of output ``cell``, in input pixels (pixel centres at integers)."""
        return cell * self.stride - self.pad + (self.rf - 1) / 2


@dataclass(frozen=True)
class TrunkGeometry:
    """Geometry along the two image axes (``y`` = rows, ``x`` = columns)."""

    y: AxisGeometry
    x: AxisGeometry

    def out_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.y.out_size(height), self.x.out_size(width)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _windows(module: nn.Module) -> tuple[Window1d, Window1d]:
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ReceptiveFieldError(f"{module}: string padding is not supported; give explicit padding")
        if module.padding_mode != "zeros":
            raise ReceptiveFieldError(f"{module}: only zero padding keeps tiles exact")
        kernel, stride, pad, dil = (
            _pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation)
        )
    elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        if module.ceil_mode:
            raise ReceptiveFieldError(f"{module}: ceil_mode pooling is not supported")
        kernel, pad = _pair(module.kernel_size), _pair(module.padding)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        dil = _pair(getattr(module, "dilation", 1))
    elif isinstance(module, BlurPool2d):
        kernel, stride, pad, dil = (3, 3), (module.stride, module.stride), (1, 1), (1, 1)
    else:
        raise ReceptiveFieldError(f"no sliding window in {type(module).__name__}")
    return tuple(  # type: ignore[return-value]
        Window1d(extent=dil[a] * (kernel[a] - 1) + 1, stride=stride[a], pad=pad[a]) for a in (0, 1)
    )


def _merge(branches: list[AxisGeometry]) -> AxisGeometry:
    """Geometry of a sum of branches: the hull of their receptive fields (shortcut + main path)."""
    strides = {b.stride for b in branches}
    if len(strides) != 1:
        raise ReceptiveFieldError(f"residual branches with different strides {sorted(strides)}")
    pad = max(b.pad for b in branches)
    last = max(b.rf - b.pad for b in branches)
    return AxisGeometry(stride=branches[0].stride, pad=pad, rf=last + pad, windows=branches[0].windows)


def _walk(module: nn.Module, geo: tuple[AxisGeometry, AxisGeometry]) -> tuple[AxisGeometry, AxisGeometry]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if isinstance(module, POINTWISE):
        return geo
    if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d | BlurPool2d):
        wy, wx = _windows(module)
        return geo[0].then(wy), geo[1].then(wx)
    if isinstance(module, nn.Sequential):
        for child in module:
            geo = _walk(child, geo)
        return geo
    if isinstance(module, BasicBlock | Bottleneck):
        convs = [module.conv1, module.conv2] + ([module.conv3] if isinstance(module, Bottleneck) else [])
        main = geo
        for conv in convs:
            main = _walk(conv, main)
        short = geo if module.downsample is None else _walk(module.downsample, geo)
        return _merge([main[0], short[0]]), _merge([main[1], short[1]])
    raise ReceptiveFieldError(
        f"cannot stream {type(module).__name__}: not a known local operation "
        "(convolution, pooling, pointwise layer, Sequential or torchvision residual block)"
    )


def trunk_geometry(trunk: nn.Module) -> TrunkGeometry:
    """Receptive field, effective stride and padding of ``trunk`` along both axes."""
    gy, gx = _walk(trunk, (AxisGeometry(), AxisGeometry()))
    return TrunkGeometry(y=gy, x=gx)
