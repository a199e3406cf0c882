"""The diffusion model's ceiling (issue 33): the VAE's reconstruction of the future images next to persistence on the
same pairs."""

from __future__ import annotations

import pytest
import torch


class _IdentityVAE(torch.nn.Module):
    """encode -> the image, decode -> the image (+ an optional constant error)."""

    def __init__(self, error: float = 0.0):
        super().__init__()
        self.error = error
        self.dtype = torch.float32

    def encode(self, x):
        return type("E", (), {"latent_dist": type("D", (), {"mean": x})()})()

    def decode(self, z):
        return type("S", (), {"sample": z + self.error})()


def test_a_perfect_autoencoder_sits_at_the_cap_and_a_blurry_one_below_persistence(tiny_dataset_dir):
    from stsynth_lib.controlnet.ceiling import ceiling_vs_persistence

    perfect = ceiling_vs_persistence(_IdentityVAE(), tiny_dataset_dir, "test", max_pairs=6)
    assert list(perfect.index) == ["VAE ceiling", "persistence"] and (perfect["pairs"] == 6).all()
    assert perfect.loc["VAE ceiling", "psnr_db"] == pytest.approx(100.0)  # identical images: the PSNR cap
    assert perfect.loc["VAE ceiling", "ssim"] == pytest.approx(1.0, abs=1e-6)
    assert perfect.loc["persistence", "psnr_minus_persistence_db"] == 0.0
    # an error of 0.5 in [-1, 1] units everywhere = 0.25 in [0, 1]: PSNR = 20 log10(1 / 0.25) ~ 12 dB
    off = ceiling_vs_persistence(_IdentityVAE(0.5), tiny_dataset_dir, "test", max_pairs=6, label="biased VAE")
    assert off.loc["biased VAE", "psnr_db"] < 13.0
    diff = off.loc["biased VAE", "psnr_db"] - off.loc["persistence", "psnr_db"]
    assert off.loc["biased VAE", "psnr_minus_persistence_db"] == pytest.approx(diff, abs=1e-9)
