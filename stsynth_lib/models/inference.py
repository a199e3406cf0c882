"""A trained generator made fast for inference on CPUs (and kept exact): batch norm folded, small transposed
convolutions as four small convolutions, optional ``torch.compile`` (inductor, weights frozen).

Why each step (measured on the developers' 2-core AMD EPYC, fp32, ``make bench``: ``bench_vs_reference``):

* **Batch norm folded** into the convolution before it (eval mode uses fixed statistics, so
  ``BN(conv(x)) = conv'(x)`` with rescaled weights and a bias): one pass over each feature map less.
* **Phase decomposition of ``ConvTranspose2d(k=4, s=2, p=1)``** on small inputs (at most ``PHASE_MAX_PIXELS``
  pixels): each of the four output phases ``(2i + a, 2j + b)`` is a 2 x 2 convolution of the input, so the layer is
  four ordinary convolutions and an interleave. oneDNN's transposed convolution is slow on the deep 1-8 px levels of
  a U-Net (up to 4x slower than the four convolutions there) and fast on the wide shallow ones, so only the small
  levels switch. The output is the same up to float rounding (~1e-7).
* **``torch.compile``** with inductor's ``freezing`` (weights constant-folded and prepacked for oneDNN, element-wise
  ops fused into the convolutions) on top: about 1.3x on these CPUs for inference; for training the compiled step is
  slower here (0.9x), so :func:`stsynth_lib.training.resolve_device` turns it on for inference only (``auto``).
  A first call compiles (seconds); a machine without a C++ compiler, or any compile error, falls back to the eager
  module with one warning.

Use :func:`prepare_for_inference` (the :class:`stsynth_lib.cgan.predictor.CGANPredictor` does); the original module is not
changed. Outputs agree with the eager module within ``INFERENCE_ATOL`` (tested in ``tests/test_inference_fast.py``).
"""

from __future__ import annotations

import copy
import shutil
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Largest input (H * W pixels) on which a 4x4 / stride 2 transposed convolution runs as four convolutions: the deep
# U-Net levels (1-8 px a side at 128-256 px tiles) gain 1.5-4x there; the wide levels (>= 16 px) are faster as they are.
PHASE_MAX_PIXELS = 8 * 8
# Tolerance on outputs in [-1, 1] between the prepared and the eager module (fp32; float rounding of the folding
# and of inductor's kernels); on uint8 images this is at most one grey level after rounding.
INFERENCE_ATOL = 1e-4
# compile="auto" in a predictor: batches predicted eagerly before compiling (a 1024 px scene is 8 batches of 16 tiles)
AUTO_COMPILE_AFTER_CALLS = 4

# tap of the 4-tap kernel used by output phase a (rows) or b (columns), for input offsets (-1, 0) or (0, +1)
_PHASE_TAPS = ((3, 1), (2, 0))


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``(Cin, Cout, 4, 4)`` transposed-convolution weight -> ``(4 * Cout, Cin, 2, 2)``: phase ``2a + b`` in block
    ``[(2a + b) * Cout, (2a + b + 1) * Cout)``."""
    wt = weight.transpose(0, 1)
    return torch.cat([wt[:, :, list(_PHASE_TAPS[a])][:, :, :, list(_PHASE_TAPS[b])] for a in (0, 1) for b in (0, 1)])


class PhaseConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d(kernel 4, stride 2, padding 1)`` that runs as four 2 x 2 convolutions on inputs of at most
    ``PHASE_MAX_PIXELS`` pixels (same weights, same output up to rounding). For inference: the phase kernels are
    built from the weights when the module is made (:meth:`from_module`): the weights must not change afterwards."""

    @classmethod
    def from_module(cls, m: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
        """The phase version of ``m`` (``m`` itself when it is not a 4x4 / stride-2 / padding-1 layer)."""
        if not cls.applies(m):
            return m
        new = cls(m.in_channels, m.out_channels, 4, 2, 1, bias=m.bias is not None,
                  device=m.weight.device, dtype=m.weight.dtype)
        new.load_state_dict(m.state_dict())
        new.register_buffer("phase_kernels", _phase_kernels(new.weight.detach()).contiguous(), persistent=False)
        return new

    @staticmethod
    def applies(m: nn.Module) -> bool:
        return (type(m) is nn.ConvTranspose2d and m.kernel_size == (4, 4) and m.stride == (2, 2)
                and m.padding == (1, 1) and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1)

    def forward(self, x: torch.Tensor, output_size: Any = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if output_size is not None or h * w > PHASE_MAX_PIXELS or not hasattr(self, "phase_kernels"):
            return super().forward(x, output_size)
        kernels = self.phase_kernels.to(x.dtype)
        n, cout = x.shape[0], self.out_channels
        xp = F.pad(x, (1, 1, 1, 1))
        phases = [F.conv2d(xp[:, :, a : a + h + 1, b : b + w + 1], kernels[k * cout : (k + 1) * cout])
                  for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
        y = torch.stack(phases, 2).view(n, cout, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, cout, 2 * h, 2 * w)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1).to(y.dtype)


def _folded(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of ``conv`` (Conv2d or ConvTranspose2d) with the eval-mode ``bn`` after it folded into its weights."""
    inv_std = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight.detach() * inv_std if bn.affine else inv_std
    shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
    new = copy.deepcopy(conv)
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    shape = [1] * conv.weight.ndim
    shape[out_dim] = -1
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        new.weight.copy_(conv.weight * scale.view(shape))
        new.bias = nn.Parameter(bias * scale + shift)
    return new


def fold_batch_norm(module: nn.Module) -> int:
    """Fold, in place, every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` / ``ConvTranspose2d`` in
    an ``nn.Sequential`` into that convolution (the norm becomes ``Identity``). Returns how many were folded."""
    n = 0
    for child in module.children():
        n += fold_batch_norm(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i in range(1, len(layers)):
            conv, bn = layers[i - 1], layers[i]
            if (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None
                    and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1):
                module[i - 1], module[i] = _folded(conv, bn), nn.Identity()
                n += 1
    return n


def use_phase_conv_transpose(module: nn.Module) -> int:
    """Swap, in place, every 4x4 / stride-2 / padding-1 ``ConvTranspose2d`` for :class:`PhaseConvTranspose2d`."""
    n = 0
    for name, child in module.named_children():
        if PhaseConvTranspose2d.applies(child):
            setattr(module, name, PhaseConvTranspose2d.from_module(child))
            n += 1
        else:
            n += use_phase_conv_transpose(child)
    return n


def has_cpp_compiler() -> bool:
    """Inductor's CPU code generation needs a C++ compiler (``c++``/``g++``/``clang++`` on PATH)."""
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


class CompiledWithFallback(nn.Module):
    """``torch.compile(module)`` that falls back to ``module`` itself (one warning) when compiling fails.

    ``compile_after_calls``: the first calls run ``module`` eagerly and compilation starts at call number
    ``compile_after_calls + 1``, so that a predictor asked for a few images (a notebook's samples) does not pay
    seconds of compiling, while a whole tree (hundreds of batches) runs compiled."""

    def __init__(self, module: nn.Module, freezing: bool = True, compile_after_calls: int = 0):
        super().__init__()
        self.module = module
        self.freezing = freezing
        self.compile_after_calls = int(compile_after_calls)
        self.calls = 0
        # not a registered submodule: the weights are listed once (under ``module``)
        object.__setattr__(self, "_compiled", torch.compile(module, dynamic=False))
        self.failed: str | None = None

    @property
    def compiling(self) -> bool:
        """Whether the next call runs the compiled module."""
        return self.failed is None and self.calls >= self.compile_after_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_compiled = self.compiling
        self.calls += 1
        if use_compiled:
            import torch._inductor.config as inductor_config

            try:
                with torch.no_grad(), _patched(inductor_config, freezing=self.freezing):
                    return self._compiled(x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager, say so once
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                warnings.warn(f"torch.compile failed ({self.failed}); predicting with the eager model instead",
                              RuntimeWarning, stacklevel=2)
        return self.module(x)


class _patched:
    def __init__(self, obj: Any, **values: Any):
        self.obj, self.values, self.old = obj, values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.old[k] = getattr(self.obj, k)
            setattr(self.obj, k, v)

    def __exit__(self, *exc: Any):
        for k, v in self.old.items():
            setattr(self.obj, k, v)


def prepare_for_inference(model: nn.Module, compile: bool = False, channels_last: bool = False,
                          compile_after_calls: int = 0) -> nn.Module:
    """A copy of ``model`` for inference: eval mode, batch norm folded, phase transposed convolutions, optionally
    channels-last and compiled (``torch.compile``, inductor, frozen weights; eager fallback; the first
    ``compile_after_calls`` calls eager, see :class:`CompiledWithFallback`). ``model`` is left as it was. Call it
    under ``torch.no_grad()``."""
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    fold_batch_norm(fast)
    use_phase_conv_transpose(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if compile:
        if not has_cpp_compiler() and next(fast.parameters()).device.type == "cpu":
            warnings.warn("no C++ compiler on PATH: torch.compile cannot build CPU kernels; predicting eagerly "
                          "(install g++ for the compiled path)", RuntimeWarning, stacklevel=2)
        else:
            fast = CompiledWithFallback(fast, compile_after_calls=compile_after_calls)
    return fast


__all__ = ["AUTO_COMPILE_AFTER_CALLS", "INFERENCE_ATOL", "PHASE_MAX_PIXELS", "CompiledWithFallback",
           "PhaseConvTranspose2d", "fold_batch_norm", "has_cpp_compiler", "prepare_for_inference",
           "use_phase_conv_transpose"]
