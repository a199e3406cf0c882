"""Residual diffusion (``diffusion_target: residual``) and the per-pixel sample mean: the loss noises
``(z_future - z_past) * scale``, a sampled residual of 0 decodes to the past through the VAE, the fitted scale is
recorded and kept on resume and by the predictor, and the sample-mean folder is the mean of the samples with their
georeferencing. CPU, 32 px tiles (the ``tiny_dataset_dir`` fixture), tiny random backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.usefixtures("one_torch_thread", "stsynth_cache_in_tmp")  # see conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from stsynth_lib.controlnet.backbone import build_tiny_sd

    return build_tiny_sd(seed=0, tokenizer_cache_dir=tmp_path_factory.mktemp("clip_tok")).freeze()


def _batch(dataset_dir, split="train", n=3):
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.training import collate

    ds = PairedTileDataset(dataset_dir, split)
    return collate([ds[i] for i in range(n)])


def _decode(backbone, latents):
    vae = backbone.vae
    with torch.no_grad():
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0].float().clamp(-1, 1)


# --------------------------------------------------------------------------- the training target


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_residual_loss_noises_the_scaled_change_from_the_past(tiny, tiny_dataset_dir, monkeypatch, prediction_type):
    import dataclasses

    from diffusers import ControlNetModel, DDPMScheduler

    from stsynth_lib.controlnet.conditioning import batch_conditioning
    from stsynth_lib.controlnet.generate import encode_prompts, image_latents
    from stsynth_lib.controlnet.losses import diffusion_loss

    batch = _batch(tiny_dataset_dir)
    cond = batch_conditioning(batch)
    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(tiny.unet, conditioning_channels=cond.shape[1])
    emb = encode_prompts(tiny, ["satellite image"] * 3, "cpu")
    sched = DDPMScheduler.from_config(tiny.noise_scheduler.config, prediction_type=prediction_type)
    backbone = dataclasses.replace(tiny, noise_scheduler=sched)
    noised, velocity = [], []  # the latents the loss noises (and builds the velocity target on)
    add_noise, get_velocity = sched.add_noise, sched.get_velocity
    monkeypatch.setattr(sched, "add_noise", lambda x, n, t: noised.append(x.clone()) or add_noise(x, n, t))
    monkeypatch.setattr(sched, "get_velocity", lambda x, n, t: velocity.append(x.clone()) or get_velocity(x, n, t))
    f = tiny.vae_scale_factor
    noise = torch.randn(3, tiny.unet.config.in_channels, 32 // f, 32 // f, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500, 990])
    scale = 2.5

    def loss(**kw):
        torch.manual_seed(7)  # the VAE posterior sample of the future
        return diffusion_loss(backbone, cn, batch["future"], cond, emb, batch["valid"], torch.float32, noise, t, **kw)

    image_loss = loss()
    residual_loss = loss(start=batch["past"], residual_scale=scale)
    torch.manual_seed(7)
    vae = tiny.vae
    with torch.no_grad():
        z_future = vae.encode(batch["future"]).latent_dist.sample() * vae.config.scaling_factor
    expected = (z_future - image_latents(tiny, batch["past"])) * scale
    assert torch.allclose(noised[0], z_future, atol=1e-6)  # image: the whole future latent (as before)
    assert torch.allclose(noised[1], expected, atol=1e-6)  # residual: the scaled change from the past's latent
    assert float((expected - z_future).abs().max()) > 0.1  # the two targets really differ
    if prediction_type == "v_prediction":  # the velocity target is built on the same latents
        assert torch.allclose(velocity[1], expected, atol=1e-6)
    assert torch.isfinite(residual_loss) and float(residual_loss.detach()) != float(image_loss.detach())


def test_the_scale_floor_keeps_a_zero_change_finite(tiny, tiny_dataset_dir):
    from stsynth_lib.controlnet import residual as R
    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(tiny_dataset_dir, "train")
    rms, n = R.latent_change_rms(tiny, ds, 4, seed=0, resolution_px=32, device="cpu")
    assert n == 4 and rms > R.RMS_FLOOR and R.scale_from_rms(rms) == pytest.approx(1 / rms)
    unchanged = [dict(ds[i], future=ds[i]["past"]) for i in range(4)]  # nothing changed: the RMS is 0
    rms0, _ = R.latent_change_rms(tiny, unchanged, 4, seed=0, resolution_px=32, device="cpu")
    assert rms0 == 0.0 and R.scale_from_rms(rms0) == pytest.approx(1 / R.RMS_FLOOR)


# --------------------------------------------------------------------------- generation


def _constant_unet(monkeypatch, unet, value: float):
    """The UNet predicts ``value`` everywhere; with a ``prediction_type="sample"`` DDIM whose last step goes to
    alpha = 1 the final latent is then exactly ``value`` (x0 = the prediction, no noise direction left)."""
    monkeypatch.setattr(unet, "forward", lambda x, t, **kw: (torch.full_like(x, value),))


def _x0_scheduler(backbone):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(backbone.noise_scheduler.config, prediction_type="sample", set_alpha_to_one=True)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a_zero_residual_decodes_to_the_past_through_the_vae(tiny, tiny_dataset_dir, monkeypatch, strength):
    from stsynth_lib.controlnet.generate import image_latents, sample_images

    batch = _batch(tiny_dataset_dir, "test")
    past = batch["past"]
    cond = torch.rand(3, 5, 32, 32)
    prompts = ["x"] * 3
    recon = _decode(tiny, image_latents(tiny, past))  # the autoencoder's reconstruction of the past

    def sample(residual_scale):
        return sample_images(tiny, None, cond, prompts, _x0_scheduler(tiny), 4, seeds=[1, 2, 3], init_image=past,
                             strength=strength, residual_scale=residual_scale)

    _constant_unet(monkeypatch, tiny.unet, 0.0)
    assert torch.allclose(sample(3.7), recon, atol=1e-6)
    assert (sample(None) - recon).abs().max() > 0.05  # the image target decodes the zero latent: not the past
    _constant_unet(monkeypatch, tiny.unet, 0.5)  # a residual r is added as r / scale
    assert torch.allclose(sample(2.0), _decode(tiny, image_latents(tiny, past) + 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="init_image"):
        sample_images(tiny, None, cond, prompts, _x0_scheduler(tiny), 4, residual_scale=2.0)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_difference_decoding_gives_the_past_exactly_plus_the_decoded_change(tiny, tiny_dataset_dir, monkeypatch,
                                                                            strength):
    """``residual_decode="difference"``: no change is the past image itself (not its reconstruction), and a change r
    adds decode(z_past + r / s) - decode(z_past) to it."""
    from stsynth_lib.controlnet.generate import image_latents, sample_images

    batch = _batch(tiny_dataset_dir, "test")
    past = batch["past"]
    cond, prompts = torch.rand(3, 5, 32, 32), ["x"] * 3
    z = image_latents(tiny, past)

    def sample(residual_scale, decode="difference"):
        return sample_images(tiny, None, cond, prompts, _x0_scheduler(tiny), 4, seeds=[1, 2, 3], init_image=past,
                             strength=strength, residual_scale=residual_scale, residual_decode=decode)

    def unclamped(latents):
        vae = tiny.vae
        with torch.no_grad():
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0].float()

    _constant_unet(monkeypatch, tiny.unet, 0.0)
    assert torch.allclose(sample(3.7), past[:, :3].clamp(-1, 1), atol=1e-6)  # the past exactly, VAE error gone
    assert (sample(3.7, "latent") - past[:, :3]).abs().max() > 0.05  # through the autoencoder: not the past
    _constant_unet(monkeypatch, tiny.unet, 0.5)
    want = (past[:, :3] + unclamped(z + 0.25) - unclamped(z)).clamp(-1, 1)
    assert torch.allclose(sample(2.0), want, atol=1e-5)
    with pytest.raises(ValueError, match="residual_decode"):
        sample(None)  # an image-target run has no change to decode
    with pytest.raises(ValueError, match="residual_decode must be one of"):
        sample(2.0, "pixels")


# --------------------------------------------------------------------------- the recorded scale


def _residual_cfg(dataset_dir, runs_dir, **kw):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", max_train_steps=1,
                train_batch_size=2, learning_rate=1e-3, validate_at_start=False, validation_steps=0,
                checkpointing_steps=0, max_train_pairs=8, progress=False, diffusion_target="residual",
                residual_scale_pairs=6)
    base.update(kw)
    return ControlNetTrainConfig(**base)


@pytest.fixture(scope="module")
def residual_run(tiny_dataset_dir, tmp_path_factory, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.train import train_controlnet

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_controlnet(_residual_cfg(  # validated at the start: the validator's residual losses and images
            tiny_dataset_dir, tmp_path_factory.mktemp("runs"), validate_at_start=True, num_validation_images=2,
            num_validation_loss_pairs=2, validation_inference_steps=2))
    finally:
        torch.set_num_threads(old)


def test_the_fitted_scale_is_recorded_and_used_by_the_predictor(residual_run, tiny_dataset_dir):
    from stsynth_lib.controlnet import residual as R
    import pandas as pd

    from stsynth_lib.controlnet import generate as G
    from stsynth_lib.controlnet.generate import ControlNetPredictor, load_trained
    from stsynth_lib.controlnet.validation import condition_gain_estimate
    from stsynth_lib.data.dataset import PairedTileDataset

    rec = yaml.safe_load((residual_run / R.RESIDUAL_FILE).read_text())
    backbone, _, params = load_trained(residual_run, "cpu")
    assert params["diffusion_target"] == "residual" and rec["n_pairs"] == 6
    ds = PairedTileDataset(tiny_dataset_dir, "train", max_pairs=8, subsample_seed=params["seed"])
    rms, _ = R.latent_change_rms(backbone, ds, 6, params["seed"], 32, "cpu")
    assert rec["latent_change_rms"] == pytest.approx(rms, rel=1e-5)
    assert rec["residual_scale"] == pytest.approx(1 / rms, rel=1e-5)
    log = pd.read_csv(residual_run / "log.csv")
    assert log.loc[0, "step"] == 0 and log.loc[0, "control_gain"] == 0.0  # zero convolutions, residual losses
    assert (residual_run / "samples" / "step-000000.png").is_file()
    est = condition_gain_estimate(residual_run, n_pairs=4, n_boot=10, device="cpu")
    assert est["control_gain"] != 0.0 and np.isfinite(est["val_loss"])  # trained one step, on the residual target
    pred = ControlNetPredictor(residual_run, "cpu")
    assert pred.residual_scale == rec["residual_scale"]
    assert pred.sampling_record()["residual_scale"] == rec["residual_scale"]
    assert pred.sampling_record()["residual_decode"] == "latent"  # the default without a validated choice
    (residual_run / G.GENERATION_FILE).write_text(yaml.safe_dump({"img2img_strength": 0.3,
                                                                 "residual_decode": "difference"}))
    try:  # the choice chapter 5 recorded on validation is what the predictor draws with
        assert ControlNetPredictor(residual_run, "cpu").sampling_record()["residual_decode"] == "difference"
        with pytest.raises(ValueError, match="residual_decode must be one of"):
            ControlNetPredictor(residual_run, "cpu", residual_decode="pixels")
    finally:
        (residual_run / G.GENERATION_FILE).unlink()


def test_resume_reads_the_recorded_scale_and_never_refits(tiny_dataset_dir, tmp_path, monkeypatch,
                                                          no_residual_refit):
    from stsynth_lib.controlnet import residual as R
    from stsynth_lib.controlnet.generate import ControlNetPredictor
    from stsynth_lib.controlnet.train import ControlNetRun, train_controlnet

    run = train_controlnet(_residual_cfg(tiny_dataset_dir, tmp_path))
    path = run / R.RESIDUAL_FILE
    no_residual_refit("resume refitted the residual scale", run)  # the recorded scale is now 7.0
    used = []
    restore = ControlNetRun.restore
    monkeypatch.setattr(ControlNetRun, "restore", lambda self, ck: used.append(self.residual_scale) or restore(self, ck))
    train_controlnet(_residual_cfg(tiny_dataset_dir, tmp_path, max_train_steps=2, resume_from_checkpoint="latest"))
    assert used == [7.0]
    assert yaml.safe_load(path.read_text())["residual_scale"] == 7.0
    assert ControlNetPredictor(run, "cpu").residual_scale == 7.0
    path.unlink()
    with pytest.raises(FileNotFoundError, match="residual.yaml"):
        ControlNetPredictor(run, "cpu")


def test_generate_split_of_a_zero_residual_model_is_the_past_through_the_vae(residual_run, tiny_dataset_dir,
                                                                              monkeypatch, tmp_path):
    """End to end (predictor, predict_split, GeoTIFFs): a residual run whose UNet draws no change writes the VAE's
    reconstruction of each past image."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from stsynth_lib.controlnet import generate as G
    from stsynth_lib.data.dataset import PairedTileDataset, to_uint8
    from stsynth_lib.predict.files import load_predictions

    monkeypatch.setattr(UNet2DConditionModel, "forward", lambda self, x, t, **kw: (torch.zeros_like(x),))
    as_backbone = lambda config: SimpleNamespace(noise_scheduler=SimpleNamespace(config=config))  # noqa: E731
    monkeypatch.setattr(G, "make_scheduler", lambda name, config: _x0_scheduler(as_backbone(config)))
    out = G.generate_split(residual_run, tiny_dataset_dir, "test", out_dir=tmp_path / "pred", num_inference_steps=3,
                           max_pairs=3, batch_size=2, device="cpu", progress=False)
    preds = load_predictions(out)
    backbone = G.load_trained(residual_run, "cpu")[0]
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=3)
    for i in range(len(ds)):
        s = ds[i]
        want = to_uint8(_decode(backbone, G.image_latents(backbone, s["past"][None]))[0]).astype(int)
        assert np.abs(preds[int(s["pair_id"])].astype(int) - want).max() <= 1
    assert yaml.safe_load((out / "sampling.yaml").read_text())["diffusion_target"] == "residual"


# --------------------------------------------------------------------------- the sample mean


def _write_samples(dataset_dir, out, k, rng):
    from stsynth_lib.predict.files import save_predictions
    from stsynth_lib.predict.split import sample_dir

    batch = _batch(dataset_dir, "test", n=4)
    imgs = []
    for j in range(k):
        x = rng.integers(0, 256, size=(4, 3, 32, 32)).astype(np.float64)
        ids = batch["pair_id"].tolist()
        keep = slice(None) if j < k - 1 else slice(0, 3)  # the last sample lacks one pair
        save_predictions(sample_dir(out, j), torch.from_numpy(x[keep] / 127.5 - 1), ids[keep], batch["aoi"][keep],
                         batch["transform"][keep], batch["crs"][keep])
        imgs.append(x)
    return batch, np.stack(imgs)


def test_the_sample_mean_folder_is_the_mean_of_the_samples_with_their_georeferencing(tiny_dataset_dir, tmp_path):
    import rasterio

    from stsynth_lib.evaluate.data import model_labels
    from stsynth_lib.predict.files import load_predictions
    from stsynth_lib.predict.split import clear_split, load_sample_std, sample_mean_dir, write_sample_mean

    out = tmp_path / "run" / "predictions" / "test"
    (tmp_path / "run" / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
    batch, x = _write_samples(tiny_dataset_dir, out, 3, np.random.default_rng(0))
    (out / "sampling.yaml").write_text(yaml.safe_dump({"strength": 1.0, "scheduler": "unipc"}))
    mean_dir = write_sample_mean(out)
    assert mean_dir == sample_mean_dir(out) == tmp_path / "run" / "predictions" / "test_sample_mean"
    got = load_predictions(mean_dir)
    ids = batch["pair_id"].tolist()
    assert sorted(got) == sorted(ids[:3])  # only pairs every sample holds
    stds = load_sample_std(mean_dir)
    for i, pid in enumerate(ids[:3]):
        exact = x[:, i].mean(0)
        assert np.abs(got[pid] - exact).max() <= 0.5 + 1e-9  # the mean, within uint8 rounding
        assert np.allclose(stds[pid], x[:, i].std(0), atol=1e-4)
        with rasterio.open(mean_dir / f"{pid:06d}.tif") as m, rasterio.open(out / f"{pid:06d}.tif") as s0:
            assert m.crs == s0.crs and m.transform == s0.transform
            assert list(m.transform)[:6] == pytest.approx(batch["transform"][i].tolist())
        assert (mean_dir / f"{pid:06d}.png").is_file()
    rec = yaml.safe_load((mean_dir / "sampling.yaml").read_text())
    assert rec["sample_mean_of"] == 3 and rec["strength"] == 1.0
    # the evaluation labels it as a sample mean of the run's ControlNet
    (tmp_path / "run" / "params.yaml").write_text(yaml.safe_dump({"model": "controlnet", "backbone": "tiny-random",
                                                                  "diffusion_target": "residual"}))
    label = model_labels({"ControlNet (sample mean)": mean_dir})["ControlNet (sample mean)"]
    assert "mean of 3 samples" in label and "residual" in label
    clear_split(out)  # new samples void the old mean
    assert not (mean_dir / "index.csv").exists() and not (mean_dir / "std.npz").exists()


def test_the_evaluation_scores_the_sample_mean_as_its_own_row(tiny_dataset_dir, tmp_path):
    from stsynth_lib.evaluate import evaluate_models
    from stsynth_lib.predict.split import write_sample_mean

    out = tmp_path / "predictions" / "test"
    _write_samples(tiny_dataset_dir, out, 2, np.random.default_rng(1))
    mean_dir = write_sample_mean(out, tmp_path / "mean")
    res = evaluate_models(tiny_dataset_dir, "test", runs={"ControlNet": out, "ControlNet (sample mean)": mean_dir},
                          compute_lpips=False, n_boot=10, progress=False)
    psnr = res.summary[res.summary["metric"] == "psnr"].set_index("model")["mean"]
    assert {"ControlNet", "ControlNet (sample mean)", "persistence"} <= set(psnr.index)
    # the mean of independent noise images is smoother: closer to any image than one noise sample
    assert psnr["ControlNet (sample mean)"] > psnr["ControlNet"]
