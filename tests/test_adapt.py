"""Stage 1 of chapter 5 (``stsynth_lib.controlnet.adapt``): the tiny backbone trained from scratch is a diffusers
folder that stage 2 loads as ``pretrained_model``, names itself, resumes exactly, and its parts do what they say.
CPU, 32 px tiles (the ``tiny_dataset_dir`` fixture), a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

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
    # a finished stage 1 called again keeps what it had recorded: its time grows by this call's, never shrinks
    wall = yaml.safe_load((resumed_dir / "summary.yaml").read_text())["wall_s"]
    again = adapt_backbone(_cfg(tiny_dataset_dir, tmp_path / "b", unet_steps=4, checkpointing_steps=2,
                                resume_from_checkpoint="latest"))
    assert yaml.safe_load((again / "summary.yaml").read_text())["wall_s"] > wall
    assert not list(again.glob("backbone.tmp*"))  # the per-process staging folder is gone


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


# --------------------------------------------------------------------------- unet_target: residual


def test_default_unet_target_is_image_and_bad_targets_are_refused(stage1):
    import yaml

    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig
    from stsynth_lib.controlnet.residual import RESIDUAL_FILE, backbone_unet_target

    assert BackboneAdaptConfig().unet_target == "image"
    params = yaml.safe_load((stage1 / "params.yaml").read_text())
    assert params["unet_target"] == "image"
    assert backbone_unet_target(stage1 / "backbone") == "image"
    assert not (stage1 / RESIDUAL_FILE).exists() and not (stage1 / "backbone" / RESIDUAL_FILE).exists()
    assert "unet_target" not in yaml.safe_load((stage1 / "summary.yaml").read_text())
    with pytest.raises(ValueError, match="unet_target must be one of"):
        BackboneAdaptConfig(unet_target="change")
    with pytest.raises(ValueError, match="residual_scale_pairs must be >= 1"):
        BackboneAdaptConfig(residual_scale_pairs=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_residual_unet_loss_noises_the_scaled_change_of_a_pair(tiny_dataset_dir, tmp_path, monkeypatch,
                                                               stsynth_cache_in_tmp, prediction_type):
    """The latents the UNet phase noises (and, with v-prediction, builds its target on) are
    ``(z_future - z_past) * scale``: z_future the posterior sample the step's generator draws, z_past the mean."""
    import dataclasses

    from diffusers import DDPMScheduler

    from stsynth_lib.controlnet.adapt import build_stage1_backbone, stage1_pairs, unet_loss
    from stsynth_lib.controlnet.adapt_loop import step_batch
    from stsynth_lib.controlnet.adapt_parts import STAGE1_PROMPT_TEMPLATE, tile_prompt
    from stsynth_lib.controlnet.conditioning import batch_prompts
    from stsynth_lib.controlnet.generate import image_latents
    from stsynth_lib.training import collate

    cfg = _cfg(tiny_dataset_dir, tmp_path, unet_target="residual", snr_gamma=None, prompt_dropout=0.0)
    bb = build_stage1_backbone(cfg, _tiny_vae(cfg))
    sched = DDPMScheduler.from_config(bb.noise_scheduler.config, prediction_type=prediction_type)
    bb = dataclasses.replace(bb, noise_scheduler=sched)
    noised, velocity, prompts = [], [], []
    add_noise, get_velocity = sched.add_noise, sched.get_velocity
    monkeypatch.setattr(sched, "add_noise", lambda x, n, t: noised.append((x.clone(), n, t)) or add_noise(x, n, t))
    monkeypatch.setattr(sched, "get_velocity", lambda x, n, t: velocity.append(x.clone()) or get_velocity(x, n, t))
    import stsynth_lib.controlnet.adapt as A

    encode = A.text_embeddings
    monkeypatch.setattr(A, "text_embeddings", lambda b, p, d: prompts.append(list(p)) or encode(b, p, d))
    ds = stage1_pairs(cfg, "train", augment=True)
    step, scale = 3, 2.5
    batch = step_batch(ds, step, cfg.unet_batch_size, cfg.seed, collate)
    assert set(batch) >= {"past", "future", "valid"} and len(batch["past"]) == cfg.unet_batch_size
    loss = unet_loss(bb, cfg, batch, step, torch.device("cpu"), residual_scale=scale)
    assert torch.isfinite(loss)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + step)  # the loss's generator: the posterior sample first
    with torch.no_grad():
        post = bb.vae.encode(batch["future"]).latent_dist
        z_future = (post.mean + post.std * torch.randn(post.mean.shape, generator=g)) * bb.vae.config.scaling_factor
        expected = (z_future - image_latents(bb, batch["past"])) * scale
    x, noise, t = noised[0]
    assert torch.allclose(x, expected, atol=1e-5)
    assert float((expected - z_future).abs().max()) > 0.1  # not the image latents
    if prediction_type == "v_prediction":
        assert torch.allclose(velocity[0], expected, atol=1e-5)
    # a pair's prompt: the ControlNet's prompt machinery with stage 1's template (the future tile's date)
    assert prompts[0] == batch_prompts(batch, cfg.prompt_template)
    month, year = int(batch["future_month"][0]), int(batch["future_year"][0])
    assert prompts[0][0] == tile_prompt(STAGE1_PROMPT_TEMPLATE, month, year)  # the stage-1 prompt of the future tile
    # a pair's past and future are turned alike: the un-augmented pair holds the same pixels, under one transform
    plain = stage1_pairs(cfg, "train")
    s = plain[int(np.flatnonzero(plain.pairs["pair_id"].to_numpy() == int(batch["pair_id"][0]))[0])]

    def turns(x):
        return [torch.rot90(x, k, (-2, -1)).flip(-1) if f else torch.rot90(x, k, (-2, -1))
                for k in range(4) for f in (False, True)]

    same = [torch.equal(p, batch["past"][0]) and torch.equal(f, batch["future"][0])
            for p, f in zip(turns(s["past"]), turns(s["future"]))]
    assert any(same)


def _tiny_vae(cfg):
    from diffusers import AutoencoderKL

    from stsynth_lib.controlnet.adapt_parts import tiny_trainable_configs

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_trainable_configs(cfg.vae_channels, cfg.unet_channels, cfg.text_hidden_size,
                                                 cfg.latent_channels)["vae"]).eval()
    vae.register_to_config(scaling_factor=0.7)
    return vae


def test_image_unet_loss_is_unchanged(tiny_dataset_dir, tmp_path, monkeypatch, stsynth_cache_in_tmp):
    """``unet_target: image`` (the default) noises what it did before the option: the scaled posterior sample of
    the tile batch, drawn first from the step's generator; the residual scale plays no part."""
    from stsynth_lib.controlnet.adapt import build_stage1_backbone, unet_loss, unet_val_loss
    from stsynth_lib.controlnet.adapt_loop import step_batch
    from stsynth_lib.controlnet.adapt_parts import TileImageDataset

    cfg = _cfg(tiny_dataset_dir, tmp_path)
    bb = build_stage1_backbone(cfg, _tiny_vae(cfg))
    noised = []
    add_noise = bb.noise_scheduler.add_noise
    monkeypatch.setattr(bb.noise_scheduler, "add_noise", lambda x, n, t: noised.append(x.clone()) or add_noise(x, n, t))
    ds = TileImageDataset(cfg.dataset_dir, "train", cfg.prompt_template, max_tiles=cfg.max_train_tiles)
    batch = step_batch(ds, 1, 4, cfg.seed)
    a = unet_loss(bb, cfg, batch, 1, torch.device("cpu"))
    b = unet_loss(bb, cfg, batch, 1, torch.device("cpu"), residual_scale=3.0)  # ignored for images
    assert torch.isfinite(a) and float(a.detach()) == float(b.detach())
    g = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
    with torch.no_grad():
        post = bb.vae.encode(batch["image"]).latent_dist
        z = (post.mean + post.std * torch.randn(post.mean.shape, generator=g)) * bb.vae.config.scaling_factor
    assert torch.equal(noised[0], z) and torch.equal(noised[1], z)
    assert np.isfinite(unet_val_loss(bb, cfg, ds, torch.device("cpu"), n=4))


@pytest.fixture(scope="module")
def residual_stage1(tiny_dataset_dir, tmp_path_factory, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.adapt import adapt_backbone

    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("runs")
    return adapt_backbone(_cfg(tiny_dataset_dir, runs, unet_target="residual", residual_scale_pairs=6,
                               vae_steps=2, unet_steps=2, checkpointing_steps=1, validation_steps=1)), runs


def test_residual_stage1_records_its_scale_in_the_backbone(residual_stage1, tiny_dataset_dir):
    import pandas as pd
    import yaml

    from stsynth_lib.controlnet import residual as R
    from stsynth_lib.controlnet.adapt import stage1_pairs
    from stsynth_lib.controlnet.backbone import load_backbone

    run, _ = residual_stage1
    rec = yaml.safe_load((run / R.RESIDUAL_FILE).read_text())
    assert rec["unet_target"] == "residual" and rec["n_pairs"] == 6 and "diffusion_target" not in rec
    assert yaml.safe_load((run / "backbone" / R.RESIDUAL_FILE).read_text()) == rec
    assert R.backbone_unet_target(run / "backbone") == "residual"
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["unet_target"] == "residual" and summary["residual_scale"] == rec["residual_scale"]
    # the ControlNet's fit, on the un-augmented training pairs, with the final VAE (phase vae ran before the fit)
    bb = load_backbone(str(run / "backbone"))
    ds = stage1_pairs(_cfg(tiny_dataset_dir, run.parent, unet_target="residual"), "train")
    rms, _ = R.latent_change_rms(bb, ds, 6, 0, 32, "cpu")
    assert rec["latent_change_rms"] == pytest.approx(rms, rel=1e-5)
    assert rec["residual_scale"] == pytest.approx(1 / rms, rel=1e-5)
    log = pd.read_csv(run / "unet" / "log.csv")
    assert np.isfinite(log["val_loss_ema"].dropna()).all() and len(log["val_loss_ema"].dropna()) == 2


def test_residual_stage1_resume_keeps_the_scale(residual_stage1, tiny_dataset_dir, no_residual_refit):
    from stsynth_lib.controlnet import residual as R
    from stsynth_lib.controlnet.adapt import adapt_backbone

    run, runs = residual_stage1
    no_residual_refit("stage 1's resume refitted the residual scale", run)  # the recorded scale is now 7.0
    adapt_backbone(_cfg(tiny_dataset_dir, runs, unet_target="residual", residual_scale_pairs=6, vae_steps=2,
                        unet_steps=3, checkpointing_steps=1, validation_steps=1, resume_from_checkpoint="latest"))
    assert R.read_residual_scale(run) == 7.0 and R.read_residual_scale(run / "backbone") == 7.0
    # turning the option on (or off) when resuming is refused like any other change
    with pytest.raises(ValueError, match="unet_target: 'residual' -> 'image'"):
        adapt_backbone(_cfg(tiny_dataset_dir, runs, residual_scale_pairs=6, vae_steps=2, unet_steps=3,
                            checkpointing_steps=1, validation_steps=1, resume_from_checkpoint="latest"))


def _controlnet_cfg(dataset_dir, runs_dir, backbone, **kw):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    return ControlNetTrainConfig(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test",
                                 pretrained_model=str(backbone), max_train_steps=1, train_batch_size=2,
                                 validate_at_start=False, validation_steps=0, checkpointing_steps=0, max_train_pairs=4,
                                 progress=False, **kw)


def test_a_residual_controlnet_takes_the_backbones_scale(residual_stage1, tiny_dataset_dir, tmp_path, monkeypatch,
                                                        no_residual_refit):
    import yaml

    from stsynth_lib.controlnet import residual as R
    from stsynth_lib.controlnet.generate import ControlNetPredictor
    from stsynth_lib.controlnet.train import ControlNetRun, train_controlnet

    run, _ = residual_stage1
    backbone = run / "backbone"
    scale = R.read_residual_scale(backbone)
    no_residual_refit("the ControlNet refitted the scale of a residual backbone")
    used = []
    fit = ControlNetRun.fit
    monkeypatch.setattr(ControlNetRun, "fit", lambda self: used.append(self.residual_scale) or fit(self))
    cn = train_controlnet(_controlnet_cfg(tiny_dataset_dir, tmp_path, backbone, diffusion_target="residual"))
    rec = yaml.safe_load((cn / R.RESIDUAL_FILE).read_text())
    assert used == [scale] and rec["residual_scale"] == scale and rec["diffusion_target"] == "residual"
    assert str(backbone) in rec["scale_from"]
    assert ControlNetPredictor(cn, "cpu").residual_scale == scale


def test_a_controlnet_whose_target_differs_from_its_backbones_is_refused(residual_stage1, stage1, tiny_dataset_dir,
                                                                         tmp_path):
    from stsynth_lib.controlnet.train import train_controlnet

    residual_backbone, image_backbone = residual_stage1[0] / "backbone", stage1 / "backbone"
    with pytest.raises(ValueError, match=r"diffusion_target is 'image'.*unet_target: 'residual'"):
        train_controlnet(_controlnet_cfg(tiny_dataset_dir, tmp_path / "a", residual_backbone))
    with pytest.raises(ValueError, match=r"diffusion_target is 'residual'.*unet_target: 'image'"):
        train_controlnet(_controlnet_cfg(tiny_dataset_dir, tmp_path / "b", image_backbone,
                                         diffusion_target="residual"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything was written
