"""cGAN models: shapes and ranges at every tile size, the PatchGAN's receptive field, attention maps, guidance channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.models import build_discriminator, build_generator
from stsynth_lib.models.attention_unet import AttentionUNetGenerator, attention_maps
from stsynth_lib.models.unet import depth_for_size


def receptive_field(module: nn.Module) -> int:
    """Receptive field (px) of one output unit of a chain of convolutions, from the kernels and strides.

    ``r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m`` over the ``nn.Conv2d`` layers in order.
    """
    r, jump = 1, 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k, s = m.kernel_size[0], m.stride[0]
            r += (k - 1) * jump
            jump *= s
    return r


@pytest.mark.parametrize("name", ["pix2pix", "attention_unet"])
@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_generator_shape_and_range_at_every_size(name, size):
    torch.manual_seed(0)
    g = build_generator(name, in_channels=7, out_channels=3, tile_size_px=size, ngf=4)
    assert g.depth == depth_for_size(size)
    x = torch.randn(2, 7, size, size) * 3  # large inputs push tanh towards its limits
    y = g(x)
    assert y.shape == (2, 3, size, size)
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1
    assert y.std() > 0.01  # not a constant output


def test_generator_rejects_wrong_inputs():
    g = build_generator("pix2pix", in_channels=4, tile_size_px=64, ngf=4)
    with pytest.raises(ValueError, match="expected a \\(B, 4, H, W\\)"):
        g(torch.randn(1, 5, 64, 64))
    with pytest.raises(ValueError, match="not divisible"):
        g(torch.randn(1, 4, 48, 48))
    with pytest.raises(ValueError, match="power of two"):
        depth_for_size(100)
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator("unet9000", 3)


def test_pix2pix_matches_reference_architecture():
    # pytorch-CycleGAN-and-pix2pix prints 54.414 M (unet_256) and 2.769 M (basic D, 6 input channels), norm=batch
    g = build_generator("pix2pix", 3, 3, 256, norm="batch")
    d = build_discriminator(3, 3, norm="batch")
    assert round(sum(p.numel() for p in g.parameters()) / 1e6, 3) == 54.414
    assert round(sum(p.numel() for p in d.parameters()) / 1e6, 3) == 2.769
    # dropout on the 3 decoder levels just outside the innermost one, as in pix2pix
    assert g.dropout_levels == [4, 5, 6]
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    assert build_generator("pix2pix", 3, 3, 64, ngf=4).dropout_levels == [4]
    assert build_generator("pix2pix", 3, 3, 64, ngf=4, dropout=0).dropout_levels == []


def test_patchgan_receptive_field_is_70px():
    d = build_discriminator(cond_channels=5, image_channels=3, ndf=8, norm="none")
    assert receptive_field(d) == 70
    assert receptive_field(build_discriminator(5, 3, ndf=8, n_layers=2)) == 34
    # empirical check: the input pixels that influence one central logit span 70 x 70
    x = torch.randn(1, 8, 256, 256, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 30, 30)
    out[0, 0, 15, 15].backward()
    touched = x.grad.abs().sum(1)[0] > 0
    rows = touched.any(1).nonzero()
    cols = touched.any(0).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_patchgan_sees_condition_and_image():
    d = build_discriminator(cond_channels=6, image_channels=3, ndf=8)
    assert d(torch.randn(2, 9, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="condition \\+ image"):
        d(torch.randn(2, 3, 64, 64))


def test_attention_maps_one_per_skip_in_unit_interval():
    torch.manual_seed(0)
    g = build_generator("attention_unet", 5, 3, 64, ngf=4)
    assert isinstance(g, AttentionUNetGenerator)
    g.train()
    x = torch.randn(2, 5, 64, 64)
    maps = attention_maps(g, x)
    assert len(maps) == g.depth - 1
    for m in maps:
        assert m.shape == (2, 1, 64, 64)
        assert (m > 0).all() and (m < 1).all()
    native = attention_maps(g, x, upsample=False)
    assert [m.shape[-1] for m in native] == [64 // 2 ** (j + 1) for j in range(g.depth - 1)]
    assert g.training  # mode restored
    # the gates matter: forcing them open changes the output
    g.eval()
    y = g(x)
    with torch.no_grad():
        for gate in g.gates:
            gate.psi.bias.fill_(50.0)
    assert not torch.allclose(y, g(x))
    with pytest.raises(TypeError):
        attention_maps(build_generator("pix2pix", 5, 3, 64, ngf=4), x)


def _batch(b=2, size=32, bands=3, gap=(12.0, 3.0), month=(1, 7)):
    return {
        "past": torch.rand(b, bands, size, size) * 2 - 1,
        "future_mask": (torch.rand(b, 1, size, size) > 0.5).float(),
        "gap_months": torch.tensor(gap[:b]),
        "future_month": torch.tensor(month[:b]),
    }


def test_condition_channels_in_documented_order():
    cfg = GuidanceConfig().resolve(dataset_has_mask=True, n_bands=3)
    assert cfg.channel_names() == ["past_b1", "past_b2", "past_b3", "future_mask", "gap_months_scaled",
                                   "future_month_sin", "future_month_cos"]
    batch = _batch()
    c = build_condition(batch, cfg)
    assert c.shape == (2, 7, 32, 32)
    assert torch.equal(c[:, :3], batch["past"])
    assert torch.equal(c[:, 3:4], batch["future_mask"])
    assert torch.allclose(c[:, 4], torch.tensor([0.5, 0.125])[:, None, None].expand(2, 32, 32))  # gap / 24
    assert torch.allclose(c[0, 5:7, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6)  # January
    assert torch.allclose(c[1, 5:7, 0, 0], torch.tensor([0.0, -1.0]), atol=1e-6)  # July


def test_past_mask_channel_follows_the_future_mask():
    cfg = GuidanceConfig(use_past_mask=True).resolve(dataset_has_mask=True, n_bands=3)
    assert cfg.channel_names()[3:5] == ["future_mask", "past_mask"]
    batch = {**_batch(), "past_mask": (torch.rand(2, 1, 32, 32) > 0.7).float()}
    c = build_condition(batch, cfg)
    assert c.shape[1] == cfg.n_channels == 8
    assert torch.equal(c[:, 3:4], batch["future_mask"]) and torch.equal(c[:, 4:5], batch["past_mask"])
    assert GuidanceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="no building labels"):
        GuidanceConfig(use_past_mask=True).resolve(dataset_has_mask=False, n_bands=3)
    with pytest.raises(ValueError, match="needs the future mask"):
        GuidanceConfig(use_mask=False, use_past_mask=True)


def test_condition_without_mask_or_time():
    no_labels = GuidanceConfig(use_mask="auto").resolve(dataset_has_mask=False, n_bands=4)
    assert "future_mask" not in no_labels.channel_names()
    c = build_condition(_batch(bands=4), no_labels)
    assert c.shape[1] == no_labels.n_channels == 4 + 3
    bare = GuidanceConfig(use_mask=False, time_encoding="none").resolve(True, 3)
    assert build_condition(_batch(), bare).shape[1] == 3
    forced = GuidanceConfig(use_mask=True).resolve(dataset_has_mask=False, n_bands=3)
    assert forced.use_mask is True
    with pytest.raises(ValueError, match="resolve"):
        build_condition(_batch(), GuidanceConfig())
    with pytest.raises(ValueError, match="n_bands=4"):
        build_condition(_batch(bands=3), no_labels)
    with pytest.raises(ValueError, match="time_encoding"):
        GuidanceConfig(time_encoding="fourier")


@pytest.mark.parametrize("name", ["pix2pix", "attention_unet"])
def test_residual_generator_starts_at_persistence(name):
    from stsynth_lib.models import init_weights

    torch.manual_seed(0)
    x = torch.rand(2, 6, 64, 64) * 2 - 1
    plain = init_weights(build_generator(name, 6, 3, 64, ngf=8))
    torch.manual_seed(0)
    res = init_weights(build_generator(name, 6, 3, 64, ngf=8, residual=True))
    y_plain, y_res = plain(x), res(x)
    assert y_res.min() >= -1 and y_res.max() <= 1
    assert torch.equal(y_res, x[:, :3])  # zero-initialised head: exactly persistence
    assert (y_plain - x[:, :3]).abs().mean() > 0.1
    (y_res - torch.zeros_like(y_res)).abs().mean().backward()
    head = res.ups[0][1]
    assert head.weight.grad.abs().sum() > 0  # the head learns from the first step
    with pytest.raises(ValueError, match="residual"):
        build_generator(name, 2, 3, 64, ngf=8, residual=True)


def test_new_building_pixels_weigh_more_in_the_l1_loss():
    from stsynth_lib.cgan.losses import l1_weights, masked_l1_loss

    valid = torch.ones(1, 1, 4, 4)
    past_mask, future_mask = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    future_mask[..., 0, :2] = 1  # two new-building pixels
    future_mask[..., 3, 3] = past_mask[..., 3, 3] = 1  # a building that already stood: not new
    valid[..., 0, 0] = 0  # an invalid new-building pixel stays out
    batch = {"valid": valid, "past_mask": past_mask, "future_mask": future_mask}
    assert l1_weights(batch, 0.0) is valid  # off: the plain masked L1, bit for bit
    w = l1_weights(batch, 9.0)
    assert w[0, 0, 0, 1] == 10 and w[0, 0, 0, 0] == 0 and w[0, 0, 3, 3] == 1 and w.sum() == 14 + 10
    pred, target = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    target[..., 0, 1] = 1.0  # the only error sits on the valid new-building pixel
    assert masked_l1_loss(pred, target, valid) == pytest.approx(1 / 15)
    assert masked_l1_loss(pred, target, w) == pytest.approx(10 / 24)
