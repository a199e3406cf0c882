"""img2img generation (denoising from the noised past image) and the strength chosen on validation: the strength-1
path is the old one bit for bit, lower strengths stay closer to the past, the choice is recorded and used by
generation and the predictor, and the test split is refused. CPU, 32 px tiles, a one-step tiny run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

GEN = dict(num_inference_steps=4, batch_size=4, max_pairs=3, progress=False)


@pytest.fixture(scope="module")
def loaded(one_step_controlnet_run):
    from stsynth_lib.controlnet.generate import load_trained

    return load_trained(one_step_controlnet_run, "cpu")


def _batch(tiny_dataset_dir, n=3):
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.training import collate

    ds = PairedTileDataset(tiny_dataset_dir, split="test")
    return collate([ds[i] for i in range(n)])


def _sample(loaded, batch, strength, steps=10, seeds=(1, 2, 3), **kw):
    from stsynth_lib.controlnet.conditioning import batch_conditioning, batch_prompts
    from stsynth_lib.controlnet.generate import make_scheduler, sample_images

    backbone, controlnet, params = loaded
    cond = batch_conditioning(batch, params["use_gap_plane"], params["gap_scale_months"], params["use_mask"])
    prompts = batch_prompts(batch, params["prompt_template"], params["empty_prompt"])
    sched = make_scheduler("unipc", backbone.noise_scheduler.config)
    return sample_images(backbone, controlnet, cond, prompts, sched, steps, 1.0, list(seeds), strength=strength,
                         **kw)


def test_strength_one_is_the_pure_noise_loop_bit_for_bit(loaded, tiny_dataset_dir):
    batch = _batch(tiny_dataset_dir)
    plain = _sample(loaded, batch, 1.0)
    with_init = _sample(loaded, batch, 1.0, init_image=batch["past"])
    assert torch.equal(plain, with_init)


def test_lower_strength_stays_closer_to_the_past(loaded, tiny_dataset_dir):
    from stsynth_lib.controlnet.generate import image_latents

    backbone = loaded[0]
    batch = _batch(tiny_dataset_dir)
    with torch.no_grad():
        lat = image_latents(backbone, batch["past"])
        recon = backbone.vae.decode(lat / backbone.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)
    dist = {s: float((_sample(loaded, batch, s, init_image=batch["past"]) - recon).abs().mean())
            for s in (0.1, 0.5, 1.0)}
    assert dist[0.1] < dist[0.5] < dist[1.0], dist
    # and the starting image matters: another past gives another image at the same seeds
    other = _sample(loaded, batch, 0.5, init_image=batch["past"].flip(0))
    assert not torch.allclose(other, _sample(loaded, batch, 0.5, init_image=batch["past"]))


@pytest.mark.parametrize("name", ["unipc", "ddim", "dpmsolver++", "euler", "ddpm"])
def test_img2img_timesteps_are_diffusers_own(loaded, name):
    from types import SimpleNamespace

    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from stsynth_lib.controlnet.generate import img2img_timesteps, make_scheduler

    for steps in (4, 10, 20):
        for s in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2):
            if int(steps * s + 1e-6) < 1:
                continue
            ours, theirs = make_scheduler(name, loaded[0].noise_scheduler.config), make_scheduler(
                name, loaded[0].noise_scheduler.config)
            ours.set_timesteps(steps)
            theirs.set_timesteps(steps)
            ts, begin = img2img_timesteps(ours, steps, s)
            want, n_run = StableDiffusionControlNetImg2ImgPipeline.get_timesteps(
                SimpleNamespace(scheduler=theirs), steps, s, "cpu")
            assert torch.equal(ts, want), (name, steps, s)
            assert len(ts) == n_run * ours.order and begin == (steps - n_run) * ours.order
    sched = make_scheduler(name, loaded[0].noise_scheduler.config)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="runs no step"):
        img2img_timesteps(sched, 10, 0.05)


def test_a_reused_scheduler_forgets_the_last_start(loaded, tiny_dataset_dir):
    """Generation reuses one scheduler object for every batch: a strength-1 call after a strength-0.5 one must be
    the fresh strength-1 call."""
    from stsynth_lib.controlnet.conditioning import batch_conditioning, batch_prompts
    from stsynth_lib.controlnet.generate import make_scheduler, sample_images

    backbone, controlnet, params = loaded
    batch = _batch(tiny_dataset_dir)
    cond = batch_conditioning(batch, params["use_gap_plane"], params["gap_scale_months"], params["use_mask"])
    prompts = batch_prompts(batch, params["prompt_template"], params["empty_prompt"])
    shared = make_scheduler("unipc", backbone.noise_scheduler.config)
    sample_images(backbone, controlnet, cond, prompts, shared, 10, 1.0, [1, 2, 3], strength=0.5,
                  init_image=batch["past"])
    again = sample_images(backbone, controlnet, cond, prompts, shared, 10, 1.0, [1, 2, 3], strength=1.0)
    assert torch.equal(again, _sample(loaded, batch, 1.0))


def test_bad_strengths_are_refused(loaded, tiny_dataset_dir):
    batch = _batch(tiny_dataset_dir, 1)
    with pytest.raises(ValueError, match="init_image"):
        _sample(loaded, batch, 0.5, seeds=(1,))
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            _sample(loaded, batch, bad, seeds=(1,), init_image=batch["past"])


def test_choose_strength_follows_its_criterion():
    from stsynth_lib.controlnet.strength import choose_strength

    t = pd.DataFrame({"strength": [0.2, 0.5, 1.0, 0.2, 0.5, 1.0],
                      "model": ["controlnet"] * 3 + ["prompt_only"] * 3,
                      "psnr": [20.0, 21.0, 12.0, 30.0, 30.0, 30.0],   # prompt-only rows never choose
                      "ssim": [0.7, 0.6, 0.2, 0.9, 0.9, 0.9],
                      "lpips": [0.3, 0.25, 0.6, 0.1, 0.1, 0.1]})
    assert choose_strength(t, "psnr") == 0.5
    assert choose_strength(t, "ssim") == 0.2
    assert choose_strength(t, "lpips") == 0.5
    assert choose_strength(t.assign(f1_new=[0.01, 0.02, 0.03, 0.5, 0.5, 0.5]), "f1_new") == 1.0
    tie = t.assign(psnr=[21.0, 21.0, 12.0, 0, 0, 0])
    assert choose_strength(tie, "psnr") == 0.5  # ties go to the higher strength
    with pytest.raises(ValueError, match="criterion"):
        choose_strength(t, "fid")
    # a PSNR floor: f1_new alone picks 1.0 (12 dB); with persistence at 20.5 dB and a floor of 0 only 0.5 competes
    f1 = t.assign(f1_new=[0.01, 0.02, 0.03, 0.5, 0.5, 0.5])
    assert choose_strength(f1, "f1_new", psnr_floor_db=0.0, persistence_psnr=20.5) == 0.5
    assert choose_strength(f1, "f1_new", psnr_floor_db=-1.0, persistence_psnr=20.5) == 0.5  # 0.2 (20.0) and 0.5
    assert choose_strength(f1, "f1_new", psnr_floor_db=-9.0, persistence_psnr=20.5) == 1.0  # all three compete
    assert choose_strength(f1, "f1_new", psnr_floor_db=0.0, persistence_psnr=25.0) == 0.5  # none clears: best PSNR
    with pytest.raises(ValueError, match="persistence_psnr"):
        choose_strength(f1, "f1_new", psnr_floor_db=0.0)


def test_sweep_refuses_the_test_split(one_step_controlnet_run, tiny_dataset_dir):
    from stsynth_lib.controlnet.strength import sweep_strength

    for split in ("test", "all", "train"):
        with pytest.raises(ValueError, match="never on test"):
            sweep_strength(one_step_controlnet_run, tiny_dataset_dir, [0.5], split=split)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sweep_strength(one_step_controlnet_run, tiny_dataset_dir, [0.0, 0.5])


def test_sweep_records_the_choice_and_generation_uses_it(one_step_controlnet_run, tiny_dataset_dir, tmp_path):
    import shutil

    from stsynth_lib.controlnet.generate import GENERATION_FILE, chosen_strength, generate_split
    from stsynth_lib.controlnet.strength import clear_chosen_strength, plot_strength_sweep, sweep_strength, sweep_table
    from stsynth_lib.predict.files import load_predictions

    run = tmp_path / "cn"
    shutil.copytree(one_step_controlnet_run, run)
    assert chosen_strength(run) == 1.0  # nothing chosen yet: pure noise
    sweep = sweep_strength(run, tiny_dataset_dir, [0.25, 1.0], max_pairs=4, compute_lpips=False,
                           allow_uncalibrated=True, progress=False, num_inference_steps=4, batch_size=4)
    assert set(sweep.table["model"]) == {"controlnet", "prompt_only"} and len(sweep.table) == 4
    assert (sweep.table["n"] == 4).all()
    best = sweep.table[sweep.table.model == "controlnet"].sort_values("psnr").iloc[-1]["strength"]
    assert sweep.chosen == best
    rec = yaml.safe_load((run / GENERATION_FILE).read_text())
    assert rec["img2img_strength"] == sweep.chosen and rec["chosen_on"] == "val" and rec["n_pairs"] == 4
    assert rec["num_inference_steps"] == 4  # the sampling settings it was chosen with
    assert sweep.at_grid_edge == (sweep.chosen == 0.25)
    assert chosen_strength(run) == sweep.chosen
    assert not (run / "strength_sweep_val").exists()  # sweep images are removed
    assert "persistence (same tiles)" in sweep_table(sweep)["strength"].tolist()
    assert plot_strength_sweep(sweep).axes

    # generation takes the recorded strength by default, and an explicit one overrides it
    kw = dict(GEN)
    default = load_predictions(generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "d", **kw))
    same = load_predictions(generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "s",
                                           strength=sweep.chosen, **kw))
    other_s = 1.0 if sweep.chosen != 1.0 else 0.25
    other = load_predictions(generate_split(run, tiny_dataset_dir, "test", out_dir=tmp_path / "o",
                                            strength=other_s, **kw))
    assert all(np.array_equal(default[k], same[k]) for k in default)
    assert any(not np.array_equal(default[k], other[k]) for k in default)
    assert clear_chosen_strength(run) == 1.0 and chosen_strength(run) == 1.0


def test_sweep_by_new_building_f1_scores_with_the_segmenter(one_step_controlnet_run, tiny_dataset_dir, tmp_path):
    """criterion f1_new: the building segmenter scores every strength (and persistence), the highest F1 wins; without
    a segmenter it is refused before anything is generated."""
    import shutil

    from stsynth_lib.controlnet.strength import plot_strength_sweep, sweep_strength, sweep_table
    from stsynth_lib.metrics.segmentation import train_segmenter

    run = tmp_path / "cn"
    shutil.copytree(one_step_controlnet_run, run)
    with pytest.raises(ValueError, match="segmenter"):
        sweep_strength(run, tiny_dataset_dir, [0.5], criterion="f1_new")
    seg, _ = train_segmenter(tiny_dataset_dir, steps=2, batch_size=4, base_channels=4, depth=2, progress=False)
    sweep = sweep_strength(run, tiny_dataset_dir, [0.5, 1.0], max_pairs=6, compute_lpips=False, criterion="f1_new",
                           allow_uncalibrated=True, progress=False, num_inference_steps=4, batch_size=4,
                           segmenter=seg, with_prompt_only=False)
    cn = sweep.table[sweep.table.model == "controlnet"]
    assert cn["f1_new"].notna().all() and sweep.persistence["f1_new"] == sweep.persistence["f1_new"]
    best = cn.sort_values(["f1_new", "strength"]).iloc[-1]["strength"]
    assert sweep.chosen == best and sweep.criterion == "f1_new"
    rec = yaml.safe_load((run / "generation.yaml").read_text())
    assert rec["criterion"] == "f1_new" and set(rec["scores"]["0.5"]["controlnet"]) >= {"psnr", "f1_new"}
    assert any("new-building F1" in c for c in sweep_table(sweep).columns)
    assert len(plot_strength_sweep(sweep).axes) == 3  # psnr, ssim, f1_new (no lpips)


def test_sweep_by_new_building_f1_refuses_unlabelled_validation(one_step_controlnet_run, unlabelled_dataset_dir):
    from stsynth_lib.controlnet.strength import sweep_strength

    with pytest.raises(ValueError, match="no val pair .* has building labels"):  # before any image is generated
        sweep_strength(one_step_controlnet_run, unlabelled_dataset_dir, [0.5], criterion="f1_new", segmenter=object())


def test_predictor_uses_the_recorded_strength(one_step_controlnet_run, tmp_path):
    import shutil

    from stsynth_lib.controlnet.generate import GENERATION_FILE
    from stsynth_lib.predict import load_predictor
    from stsynth_lib.predict.cli import parse_args

    run = tmp_path / "cn"
    shutil.copytree(one_step_controlnet_run, run)
    plain = load_predictor(run)
    assert (plain.strength, plain.steps, plain.scheduler_name) == (1.0, 20, "unipc")  # nothing chosen
    (run / GENERATION_FILE).write_text(yaml.safe_dump({"img2img_strength": 0.4, "num_inference_steps": 10,
                                                       "scheduler": "ddim", "guidance_scale": 1.0}))
    chosen = load_predictor(run)
    assert (chosen.strength, chosen.steps, chosen.scheduler_name) == (0.4, 10, "ddim")  # as chosen on validation
    assert load_predictor(run, num_inference_steps=2).steps == 2
    assert load_predictor(run, num_inference_steps=2, strength=0.8).strength == 0.8
    assert parse_args(["--run", "r", "--data", "d", "--out", "o", "--strength", "0.5"]).strength == 0.5
    with pytest.raises(SystemExit):
        parse_args(["--run", "r", "--data", "d", "--out", "o", "--strength", "0"])


def test_training_further_voids_a_recorded_strength(tiny_dataset_dir, tmp_path, stsynth_cache_in_tmp):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.generate import GENERATION_FILE
    from stsynth_lib.controlnet.train import train_controlnet

    base = dict(dataset_dir=str(tiny_dataset_dir), runs_dir=str(tmp_path), profile="test", train_batch_size=2,
                validate_at_start=False, validation_steps=0, checkpointing_steps=1, max_train_pairs=8, progress=False)
    run = train_controlnet(ControlNetTrainConfig(max_train_steps=1, **base))
    (run / GENERATION_FILE).write_text(yaml.safe_dump({"img2img_strength": 0.4}))
    train_controlnet(ControlNetTrainConfig(max_train_steps=1, resume_from_checkpoint="latest", **base))
    assert (run / GENERATION_FILE).is_file()  # nothing trained: the choice still holds
    train_controlnet(ControlNetTrainConfig(max_train_steps=2, resume_from_checkpoint="latest", **base))
    assert not (run / GENERATION_FILE).exists()  # new weights: choose again


def test_tables_say_when_images_started_from_the_past(one_step_controlnet_run, tiny_dataset_dir, tmp_path):
    import shutil

    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.evaluate.data import model_labels

    run = tmp_path / "cn"
    shutil.copytree(one_step_controlnet_run, run)
    noise = generate_split(run, tiny_dataset_dir, "test", strength=1.0, **GEN)
    assert "img2img" not in model_labels({"controlnet": noise})["controlnet"]
    rec = yaml.safe_load((noise / "sampling.yaml").read_text())
    assert rec["strength"] == 1.0 and rec["num_inference_steps"] == 4 and rec["prompt_only"] is False
    past = generate_split(run, tiny_dataset_dir, "test", strength=0.5, **GEN)
    alone = generate_split(run, tiny_dataset_dir, "test", strength=0.5, prompt_only=True, **GEN)
    labels = model_labels({"controlnet": past, "prompt_only": alone})
    assert labels["controlnet"].startswith("ControlNet [") and "img2img from the past image, strength 0.5" in labels["controlnet"]
    assert labels["prompt_only"].startswith("Backbone alone") and "strength 0.5" in labels["prompt_only"]


def test_clearing_a_predictions_folder_removes_its_sampling_record(tmp_path):
    from stsynth_lib.predict.split import SAMPLING_FILE, clear_split

    (tmp_path / SAMPLING_FILE).write_text("strength: 0.3\n")
    clear_split(tmp_path)
    assert not (tmp_path / SAMPLING_FILE).exists()  # an interrupted run cannot pass its images off as old settings
