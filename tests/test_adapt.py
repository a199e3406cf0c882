"""Stage 1 of chapter 5 (``stsynth_lib.controlnet.adapt``): the tiny backbone trained from scratch is a diffusers
folder that stage 2 loads as ``pretrained_model``, names itself, resumes exactly, and its parts do what they say.
CPU, 32 px tiles (the ``tiny_dataset_dir`` fixture), a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

TINY = dict(vae_channels=[8, 16, 16], unet_channels=[16, 32], text_hidden_size=16, vae_crop_px=16,
            vae_batch_size=4, unet_batch_size=4, lr_warmup_steps=2, max_train_tiles=24, max_val_tiles=4,
            validation_steps=0, log_every_steps=1, progress=False)


def _cfg(dataset_dir, runs_dir, **kw):
    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig

    return BackboneAdaptConfig(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test",
                               **{**TINY, "vae_steps": 3, "unet_steps": 3, "checkpointing_steps": 0, **kw})


@pytest.fixture(scope="module")
def stage1(tiny_dataset_dir, tmp_path_factory, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.adapt import adapt_backbone

    torch.set_num_threads(1)
    return adapt_backbone(_cfg(tiny_dataset_dir, tmp_path_factory.mktemp("runs")))


def test_stage1_backbone_loads_names_itself_and_carries_a_controlnet(stage1, tiny_dataset_dir, tmp_path):
    import yaml

    from stsynth_lib.controlnet.backbone import load_backbone
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.train import train_controlnet

    bb = load_backbone(str(stage1 / "backbone"))
    assert bb.kind == "tiny-trained"
    assert "trained from scratch on the test train split" in bb.description
    assert "stable diffusion" not in bb.description.lower()
    assert bb.vae_scale_factor == 4 and bb.tokenizer.vocab_size == 49408
    marker = json.loads((stage1 / "backbone" / "stsynth_backbone.json").read_text())
    assert marker["description"] == bb.description
    summary = yaml.safe_load((stage1 / "summary.yaml").read_text())
    assert summary["vae_factor"] == 4 and np.isfinite(summary["vae_val"]["psnr_db"])
    # the VAE latents were scaled to unit std on the training tiles
    assert summary["vae_scaling_factor"] == pytest.approx(bb.vae.config.scaling_factor)
    # stage 2 trains on it unchanged: the conditioning encoder lands on the factor-4 latent grid
    cfg = ControlNetTrainConfig(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="test",
                                pretrained_model=str(stage1 / "backbone"), max_train_steps=1, train_batch_size=2,
                                validate_at_start=False, validation_steps=0, checkpointing_steps=0, max_train_pairs=4,
                                progress=False)
    params = yaml.safe_load((train_controlnet(cfg) / "params.yaml").read_text())
    assert params["backbone"] == "tiny-trained" and params["backbone_description"] == bb.description


def test_vae_and_unet_learn(stage1):
    import pandas as pd

    vae_log = pd.read_csv(stage1 / "vae" / "log.csv")
    unet_log = pd.read_csv(stage1 / "unet" / "log.csv")
    assert list(vae_log["step"].dropna()) == [1, 2, 3] and list(unet_log["step"].dropna()) == [1, 2, 3]
    assert np.isfinite(vae_log["loss"]).all() and np.isfinite(unet_log["loss"]).all()
    assert "val_psnr_db" in vae_log and "val_loss_ema" in unet_log  # validated at the end of each phase


def test_resume_replays_the_uninterrupted_run(tiny_dataset_dir, tmp_path, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.adapt import adapt_backbone
    from stsynth_lib.controlnet.backbone import load_backbone

    full = load_backbone(str(adapt_backbone(_cfg(tiny_dataset_dir, tmp_path / "a", unet_steps=4)) / "backbone"))
    adapt_backbone(_cfg(tiny_dataset_dir, tmp_path / "b", unet_steps=2, checkpointing_steps=2))
    resumed_dir = adapt_backbone(_cfg(tiny_dataset_dir, tmp_path / "b", unet_steps=4, checkpointing_steps=2,
                                      resume_from_checkpoint="latest"))
    resumed = load_backbone(str(resumed_dir / "backbone"))
    for name in ("unet", "text_encoder", "vae"):
        a, b = getattr(full, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (resumed_dir / "unet" / "checkpoints" / "checkpoint-4").is_dir()


def test_min_snr_weights_and_ema_warmup():
    from diffusers import DDPMScheduler

    from stsynth_lib.controlnet.adapt_parts import EMA, min_snr_weights
    from stsynth_lib.controlnet.backbone import SD15_SCHEDULER

    sched = DDPMScheduler(**SD15_SCHEDULER)
    t = torch.tensor([0, 100, 999])
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = min_snr_weights(sched, t, 5.0)
    assert snr[0] > 5 and w[0] == pytest.approx(float(5.0 / snr[0]), rel=1e-5)  # clean images weighed down
    assert snr[2] < 5 and w[2] == pytest.approx(1.0)  # noisy ones keep weight 1
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # warm-up: decay = min(0.999, 2 / 11)
    assert float(ema.shadow[0][0, 0]) == pytest.approx(1 - 2 / 11)


def test_tile_images_crops_prompts_and_bad_crop(tiny_dataset_dir):
    from stsynth_lib.controlnet.adapt_parts import TileImageDataset

    ds = TileImageDataset(tiny_dataset_dir, "train", crop_px=16, augment=True)
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["valid"].shape == (1, 16, 16)
    assert str(s["year"]) in s["prompt"] and s["prompt"].startswith("satellite image, ")
    assert set(ds.tiles["split"]) == {"train"}
    with pytest.raises(ValueError, match="crop_px=64 must be between 8 and the tile size 32"):
        TileImageDataset(tiny_dataset_dir, "train", crop_px=64)


def test_conditioning_encoder_follows_the_vae_factor():
    from types import SimpleNamespace

    from stsynth_lib.controlnet.train import cond_embedding_channels

    assert cond_embedding_channels(SimpleNamespace(vae_scale_factor=8)) == (16, 32, 96, 256)  # diffusers' default
    assert cond_embedding_channels(SimpleNamespace(vae_scale_factor=4)) == (16, 32, 96)
    with pytest.raises(ValueError, match="not a power of 2"):
        cond_embedding_channels(SimpleNamespace(vae_scale_factor=6))


def test_missing_pretrained_backbone_names_the_fix(tiny_dataset_dir, tmp_path, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.adapt import adapt_backbone
    from stsynth_lib.controlnet.backbone import BackboneNotFoundError

    with pytest.raises(BackboneNotFoundError, match="no such folder"):
        adapt_backbone(_cfg(tiny_dataset_dir, tmp_path, pretrained_model=str(tmp_path / "no_sd15_here")))


def test_bad_stage1_options_are_refused_by_name():
    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig

    for kw, msg in (({"vae_loss": "huber"}, "vae_loss must be l1 or mse"),
                    ({"mixed_precision": "fp16"}, "mixed_precision must be auto, no or bf16"),
                    ({"prompt_dropout": 1.5}, "prompt_dropout must be in"),
                    ({"unet_steps": 0}, "unet_steps must be >= 1")):
        with pytest.raises(ValueError, match=msg):
            BackboneAdaptConfig(**kw)


def test_stage1_figures(stage1, tiny_dataset_dir):
    import matplotlib.pyplot as plt

    from stsynth_lib.controlnet.adapt_parts import plot_reconstructions
    from stsynth_lib.controlnet.adapt_plots import plot_prompt_samples, plot_stage1_training
    from stsynth_lib.controlnet.backbone import load_backbone

    bb = load_backbone(str(stage1 / "backbone"))
    fig = plot_stage1_training(stage1)
    assert fig in [plt.figure(n) for n in plt.get_fignums()]  # a pyplot figure: plt.show() displays it
    fig = plot_reconstructions(bb.vae, tiny_dataset_dir, "val", n=2)
    assert len(fig.axes) == 6
    fig = plot_prompt_samples(bb, ["satellite image, January 2019", "satellite image, July 2019"], seeds=(0,),
                              size_px=32, num_inference_steps=2)
    assert [ax.get_title() for ax in fig.axes] == ["January 2019", "July 2019"]
    plt.close("all")


def test_resume_with_other_options_is_refused(tiny_dataset_dir, tmp_path, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.adapt import adapt_backbone

    adapt_backbone(_cfg(tiny_dataset_dir, tmp_path, vae_steps=1, unet_steps=1))
    changed = _cfg(tiny_dataset_dir, tmp_path, vae_steps=1, unet_steps=2, unet_learning_rate=1e-2,
                   resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="unet_learning_rate: 0.0005 -> 0.01"):
        adapt_backbone(changed)
    # more steps alone is what resuming is for
    longer = _cfg(tiny_dataset_dir, tmp_path, vae_steps=1, unet_steps=2, resume_from_checkpoint="latest")
    assert (adapt_backbone(longer) / "backbone" / "stsynth_backbone.json").is_file()
