"""The fast inference path (stsynth_lib.models.inference) gives the trained generator's outputs: batch norm folded,
phase transposed convolutions and torch.compile agree with eager within INFERENCE_ATOL; compile failures fall back."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from stsynth_lib.models import build_generator, init_weights
from stsynth_lib.models.inference import (INFERENCE_ATOL, PHASE_MAX_PIXELS, CompiledWithFallback, PhaseConvTranspose2d,
                                          fold_batch_norm, has_cpp_compiler, prepare_for_inference,
                                          use_phase_conv_transpose)
from stsynth_lib.training import resolve_device


def _trained_like(model: str, size: int = 64, in_ch: int = 7, **kw) -> nn.Module:
    """A generator with seeded random weights and batch-norm statistics away from (0, 1), so folding matters."""
    torch.manual_seed(0)
    G = init_weights(build_generator(model, in_ch, 3, size, ngf=8, norm="batch", dropout=0.5, **kw))
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.05)  # the residual head starts at zero
    return G.eval()


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (4, 4), (8, 8), (3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_phase_conv_transpose_equals_conv_transpose(hw, bias):
    torch.manual_seed(1)
    ct = nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=bias)
    if bias:
        nn.init.normal_(ct.bias)
    phase = PhaseConvTranspose2d.from_module(ct)
    assert isinstance(phase, PhaseConvTranspose2d)
    x = torch.randn(3, 6, *hw)
    with torch.no_grad():
        torch.testing.assert_close(phase(x), ct(x), atol=1e-5, rtol=1e-5)


def test_phase_conv_transpose_keeps_other_layers_and_large_inputs():
    other = nn.ConvTranspose2d(4, 4, 3, 2, 1)
    assert PhaseConvTranspose2d.from_module(other) is other  # not 4x4 / stride 2 / padding 1: left as it is
    ct = nn.ConvTranspose2d(4, 2, 4, 2, 1)
    phase = PhaseConvTranspose2d.from_module(ct)
    big = torch.randn(1, 4, 16, 16)
    assert 16 * 16 > PHASE_MAX_PIXELS
    with torch.no_grad():
        torch.testing.assert_close(phase(big), ct(big))


@pytest.mark.parametrize("model,kw", [("pix2pix", {}), ("pix2pix", {"residual": True, "gap_channel": 4}),
                                      ("attention_unet", {})])
def test_prepared_generator_matches_eager(model, kw):
    G = _trained_like(model, **kw)
    ref = copy.deepcopy(G)
    prepared = prepare_for_inference(G)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())  # every norm folded
    assert any(isinstance(m, PhaseConvTranspose2d) for m in prepared.modules())
    x = torch.rand(5, 7, 64, 64) * 2 - 1
    with torch.no_grad():
        want, got = G(x), prepared(x)
    assert (got - want).abs().max() <= INFERENCE_ATOL
    for a, b in zip(G.state_dict().values(), ref.state_dict().values()):  # the trained generator is left as it was
        assert torch.equal(a, b)


def test_fold_batch_norm_counts_and_keeps_outputs():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.ConvTranspose2d(4, 2, 4, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for m in seq:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    seq.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = seq(x)
        folded = copy.deepcopy(seq)
        assert fold_batch_norm(folded) == 2
        assert use_phase_conv_transpose(folded) == 1
        torch.testing.assert_close(folded(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile needs a C++ compiler for CPU kernels")
def test_compiled_generator_matches_eager():
    G = _trained_like("pix2pix", residual=True, gap_channel=4)
    compiled = prepare_for_inference(G, compile=True)
    assert isinstance(compiled, CompiledWithFallback)
    x = torch.rand(4, 7, 64, 64) * 2 - 1
    with torch.no_grad():
        got, want = compiled(x), G(x)
    assert compiled.failed is None, compiled.failed
    assert (got - want).abs().max() <= INFERENCE_ATOL


def test_compile_failure_falls_back_to_eager_with_a_warning():
    G = _trained_like("pix2pix")
    wrapped = CompiledWithFallback(prepare_for_inference(G))

    def broken(_x):
        raise RuntimeError("no compiler here")

    wrapped._compiled = broken
    x = torch.rand(2, 7, 64, 64)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*eager"), torch.no_grad():
        out = wrapped(x)
    assert wrapped.failed and "no compiler here" in wrapped.failed
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: later calls go straight to the eager module
        torch.testing.assert_close(wrapped(x), out)
        assert (out - G(x)).abs().max() <= INFERENCE_ATOL


def test_resolve_device_decides_compilation(monkeypatch):
    monkeypatch.delenv("STSYNTH_COMPILE", raising=False)
    assert resolve_device("cpu", "no", compile="auto", for_inference=True).compile == has_cpp_compiler()
    assert not resolve_device("cpu", "no", compile="auto").compile  # training on a CPU: the compiled step is slower
    assert resolve_device("cpu", "no", compile=True).compile
    monkeypatch.setenv("STSYNTH_COMPILE", "0")
    assert not resolve_device("cpu", "no", compile="auto", for_inference=True).compile
    assert resolve_device("cpu", "no", compile=True).compile  # the variable only overrides auto
    with pytest.raises(ValueError, match="compile must be"):
        resolve_device("cpu", "no", compile="yes")


@pytest.mark.skipif(not has_cpp_compiler(), reason="torch.compile needs a C++ compiler for CPU kernels")
def test_compiled_predictor_pads_batches_and_matches_eager(tiny_dataset_dir, tmp_path):
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.predict import load_predictor

    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t", ngf=8, ndf=8,
                          batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False, device="cpu",
                          use_mask=True)
    run = train_cgan(cfg)
    fast, plain = load_predictor(run, compile=True), load_predictor(run, compile=False)
    assert fast.setup.compile and not plain.setup.compile
    rng = np.random.default_rng(0)
    past = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    mask = (rng.random((3, 32, 32)) > 0.7).astype(np.uint8)
    for n in (3, 2, 1):  # smaller batches run padded to the first one's size: one compiled graph
        got = fast.predict(past[:n], "2019-01", "2019-04", mask[:n]).astype(int)
        want = plain.predict(past[:n], "2019-01", "2019-04", mask[:n]).astype(int)
        assert got.shape == want.shape == (n, 3, 32, 32)
        assert np.abs(got - want).max() <= 1  # INFERENCE_ATOL is far below half a grey level; rounding may flip
    assert fast._batch_bucket == 3


def test_predictor_precision_auto_follows_the_resolver_and_bf16_stays_near_fp32(tiny_dataset_dir, tmp_path,
                                                                                 monkeypatch):
    """precision auto = what resolve_device picks for training (bf16 only where the CPU has native bf16); bf16
    predictions within 2 grey levels of fp32 (the scene benchmark's bound); an unknown precision is refused."""
    import stsynth_lib.training as training
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.cgan.train import train_cgan
    from stsynth_lib.predict import load_predictor

    cfg = CGANTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="t", ngf=8, ndf=8,
                          batch_size=4, max_steps=2, max_train_pairs=8, max_val_pairs=4, progress=False, device="cpu",
                          use_mask=True)
    run = train_cgan(cfg)
    for native in (False, True):
        monkeypatch.setattr(training, "cpu_has_native_bf16", lambda native=native: native)
        assert load_predictor(run, compile=False, precision="auto").setup.mixed_precision == ("bf16" if native else "no")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_predictor(run, precision="fp16")
    rng = np.random.default_rng(0)
    past = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    mask = (rng.random((2, 32, 32)) > 0.7).astype(np.uint8)
    fp32 = load_predictor(run, compile=False).predict(past, "2019-01", "2019-04", mask).astype(int)
    bf16 = load_predictor(run, compile=False, precision="bf16").predict(past, "2019-01", "2019-04", mask).astype(int)
    assert np.abs(bf16 - fp32).max() <= 2


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.skipif(
    not has_cpp_compiler(), reason="torch.compile needs a C++ compiler for CPU kernels"))])
def test_segmenter_masks_equal_the_plain_model_and_follow_new_weights(compile):
    from stsynth_lib.metrics.segmentation import SegUNet, predict_masks

    torch.manual_seed(0)
    seg = SegUNet(base_channels=8, depth=2).eval()
    with torch.no_grad():
        for m in seg.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)  # 2 batches of 3: padded
    with torch.no_grad():  # centre the logits so that about half the pixels are called building
        seg.head.bias.sub_(seg(torch.as_tensor(images, dtype=torch.float32) / 127.5 - 1.0).median())

    def plain(model):
        with torch.no_grad():
            x = torch.as_tensor(images, dtype=torch.float32) / 127.5 - 1.0
            return (torch.sigmoid(model(x)) > 0.5).to(torch.uint8).numpy()

    got = predict_masks(seg, images, batch_size=3, compile=compile)
    assert 0 < got.mean() < 1 and (got != plain(seg)).mean() < 1e-3  # equal but for probabilities ~1e-7 from 0.5
    with torch.no_grad():  # the judge trained further: its prepared copy is made again
        seg.head.bias.add_(5.0)
    assert predict_masks(seg, images, batch_size=3, compile=compile).mean() > got.mean()


def test_compilation_starts_after_the_first_calls():
    """compile_after_calls=2: two calls eager (a notebook's few samples pay no compile), the third compiled."""
    G = _trained_like("pix2pix")
    wrapped = CompiledWithFallback(prepare_for_inference(G), compile_after_calls=2)
    used = []

    def fake_compiled(x):
        used.append(len(x))
        return wrapped.module(x)

    object.__setattr__(wrapped, "_compiled", fake_compiled)
    x = torch.rand(2, 7, 64, 64)
    with torch.no_grad():
        for _ in range(2):
            assert not used and wrapped.compiling is (wrapped.calls >= 2)
            wrapped(x)
        assert wrapped.compiling and not used
        wrapped(x)
    assert used == [2] and wrapped.calls == 3
