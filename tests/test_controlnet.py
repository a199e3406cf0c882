"""ControlNet on a tiny random Stable Diffusion: conditioning, tokenizer guard, backbone loading, training, resume,
generation. Everything runs on CPU at 32 px (the ``tiny_dataset_dir`` fixture)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from stsynth_lib.controlnet.backbone import (  # noqa: E402
    BackboneNotFoundError,
    build_tiny_sd,
    load_backbone,
    save_backbone,
)
from stsynth_lib.controlnet.conditioning import (  # noqa: E402
    apply_prompt_dropout,
    batch_conditioning,
    build_prompt,
    conditioning_channels,
    count_new_buildings,
    make_conditioning,
    render_prompt,
)
from stsynth_lib.controlnet.tokenizer import (  # noqa: E402
    CLIP_VOCAB_SIZE,
    TokenizerCheckError,
    build_clip_tokenizer,
    check_tokenizer,
)


@pytest.fixture(scope="module", autouse=True)
def _tokenizer_cache_in_tmp(stsynth_cache_in_tmp):
    """Every test of this module keeps the CLIP tokenizer files out of the user's ~/.cache (conftest.py)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="session")
def tok_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_tok")


@pytest.fixture(scope="session")
def tiny(tok_cache):
    return build_tiny_sd(seed=0, tokenizer_cache_dir=tok_cache).freeze()


@pytest.fixture(scope="session")
def batch(tiny_dataset_dir):
    from torch.utils.data import default_collate

    from stsynth_lib.data.dataset import PairedTileDataset

    ds = PairedTileDataset(tiny_dataset_dir, "train")
    return default_collate([ds[i] for i in range(4)])


# --------------------------------------------------------------------------- conditioning and prompts


def test_conditioning_shapes_and_ranges(batch):
    cond = batch_conditioning(batch, use_gap_plane=True, gap_scale_months=24.0)
    b, c, h, w = batch["past"].shape
    assert cond.shape == (b, c + 2, h, w) and c + 2 == conditioning_channels(c, True, True)
    assert cond.min() >= 0 and cond.max() <= 1
    torch.testing.assert_close(cond[:, :c], (batch["past"] + 1) / 2)
    torch.testing.assert_close(cond[:, c:c + 1], batch["future_mask"])
    gap = cond[:, c + 1]
    for i in range(b):  # a constant plane per sample = gap / 24
        assert torch.allclose(gap[i], torch.full_like(gap[i], float(batch["gap_months"][i]) / 24.0))
    no_mask = batch_conditioning(batch, use_gap_plane=False, use_mask=False)
    assert no_mask.shape == (b, c, h, w)
    single = make_conditioning(batch["past"][0], batch["future_mask"][0], batch["gap_months"][0])
    torch.testing.assert_close(single, cond[0])


def test_conditioning_rejects_bad_inputs(batch):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        make_conditioning(batch["past"] * 127.5 + 127.5, batch["future_mask"], batch["gap_months"])
    with pytest.raises(ValueError, match="0 and 1"):
        make_conditioning(batch["past"], batch["future_mask"] * 0.5 + 0.25, batch["gap_months"])
    with pytest.raises(ValueError, match="gap_months"):
        make_conditioning(batch["past"], batch["future_mask"], None, use_gap_plane=True)


def test_count_new_buildings():
    past = np.zeros((16, 16))
    fut = np.zeros((16, 16))
    fut[1:3, 1:3] = 1  # new
    fut[8:10, 8:10] = 1  # existed (overlaps the past footprint)
    fut[12:14, 2:4] = 1  # new
    past[8, 8] = 1
    assert count_new_buildings(past, fut) == 2
    assert count_new_buildings(fut, fut) == 0


def _sample(has_mask=True):
    fm = torch.zeros(1, 16, 16)
    fm[0, 2:4, 2:4] = 1
    return {"future_mask": fm, "past_mask": torch.zeros(1, 16, 16), "has_mask": torch.tensor(has_mask),
            "aoi": "L15-0001E-0001N", "future_month": torch.tensor(7), "future_year": torch.tensor(2019),
            "past_month": torch.tensor(3), "past_year": torch.tensor(2019), "gap_months": torch.tensor(4.0)}


def test_prompts_from_metadata():
    tpl = "satellite image of {aoi}, {month_name} {year}, {gap_months} months later, {n_new_buildings} new buildings"
    assert build_prompt(_sample(), tpl) == "satellite image of L15-0001E-0001N, July 2019, 4 months later, 1 new building"
    # unlabelled AOI: the building count is unknown, its segment is dropped rather than printing None
    assert build_prompt(_sample(False), tpl) == "satellite image of L15-0001E-0001N, July 2019, 4 months later"
    assert build_prompt(_sample(), tpl, empty_prompt=True) == ""
    with pytest.raises(KeyError, match="cloud_cover"):
        render_prompt("{cloud_cover}", {"year": 2019})


def test_prompt_dropout():
    prompts = ["p"] * 2000
    assert apply_prompt_dropout(prompts, 0.0) == prompts
    assert apply_prompt_dropout(prompts, 1.0) == [""] * 2000
    dropped = apply_prompt_dropout(prompts, 0.3, torch.Generator().manual_seed(0)).count("")
    assert 500 < dropped < 700
    with pytest.raises(ValueError):
        apply_prompt_dropout(prompts, 1.5)


# --------------------------------------------------------------------------- tokenizer and backbone


def test_real_clip_tokenizer(tok_cache):
    tok = build_clip_tokenizer(tok_cache)
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    check_tokenizer(tok)  # does not raise


def test_tokenizer_guard_fails_on_toy_vocabulary():
    from transformers import CLIPTokenizer

    toy = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    with pytest.raises(TokenizerCheckError, match="2 tokens"):
        check_tokenizer(toy)


def test_local_backbone_with_toy_tokenizer_is_refused(tiny, tmp_path):
    from transformers import CLIPTokenizer

    folder = save_backbone(tiny, tmp_path / "sd")
    assert load_backbone(str(folder)).kind == "tiny-random"
    CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[]).save_pretrained(folder / "tokenizer")
    with pytest.raises(TokenizerCheckError, match="vocabulary has 2 tokens"):
        load_backbone(str(folder))


def test_missing_backbone_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(BackboneNotFoundError, match="no such folder"):
        load_backbone(str(tmp_path / "nowhere" / "sd15"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneNotFoundError) as e:
        load_backbone("someone/not-cached-sd15")
    msg = str(e.value)
    assert "someone/not-cached-sd15" in msg and "--pretrained_model /path/to/local/sd15" in msg


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_sd_shapes(tiny, size):
    assert tiny.vae_scale_factor == 8 and len(tiny.tokenizer) == CLIP_VOCAB_SIZE
    with torch.no_grad():
        lat = tiny.vae.encode(torch.zeros(1, 3, size, size)).latent_dist.mean
        assert lat.shape == (1, 4, size // 8, size // 8)
        emb = tiny.text_encoder(tiny.tokenizer(["x"], padding="max_length", return_tensors="pt").input_ids)[0]
        out = tiny.unet(lat, 10, encoder_hidden_states=emb).sample
    assert out.shape == lat.shape


# --------------------------------------------------------------------------- training


def test_training_step_changes_only_controlnet(tiny, batch):
    from diffusers import ControlNetModel

    from stsynth_lib.controlnet.generate import encode_prompts
    from stsynth_lib.controlnet.losses import diffusion_loss, zero_conv_parameters

    cond = batch_conditioning(batch)
    cn = ControlNetModel.from_unet(tiny.unet, conditioning_channels=cond.shape[1])
    frozen = {f"{name}.{k}": v.clone() for name, m in (("unet", tiny.unet), ("vae", tiny.vae), ("te", tiny.text_encoder))
              for k, v in m.state_dict().items()}
    zero, other = zero_conv_parameters(cn)
    assert all(float(p.detach().abs().max()) == 0 for p in zero)  # zero convolutions start at 0
    before_zero = [p.detach().clone() for p in zero]
    before_other = [p.detach().clone() for p in other]
    opt = torch.optim.AdamW(cn.parameters(), lr=1e-3, weight_decay=0.0)
    emb = encode_prompts(tiny, ["satellite image"] * cond.shape[0], "cpu")
    for step in range(2):
        loss = diffusion_loss(tiny, cn, batch["future"], cond, emb, batch["valid"], torch.float32)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 0:  # zero convs block the gradient to the rest of the ControlNet at the first step
            assert all(torch.equal(a, b) for a, b in zip(before_other, other))
    assert any(not torch.equal(a, b) for a, b in zip(before_zero, zero))
    assert any(not torch.equal(a, b) for a, b in zip(before_other, other))
    for name, m in (("unet", tiny.unet), ("vae", tiny.vae), ("te", tiny.text_encoder)):
        assert not any(p.requires_grad for p in m.parameters())
        for k, v in m.state_dict().items():
            assert torch.equal(v, frozen[f"{name}.{k}"]), f"frozen {name}.{k} changed"


def _cfg(dataset_dir, runs_dir, **kw):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", max_train_steps=4,
                train_batch_size=2, learning_rate=1e-3, validation_steps=2, num_validation_images=2,
                num_validation_loss_pairs=4,
                validation_inference_steps=2, checkpointing_steps=2, checkpoints_total_limit=1, log_every_steps=1,
                max_train_pairs=12, progress=False)
    base.update(kw)
    return ControlNetTrainConfig(**base)


@pytest.fixture(scope="module")
def trained_runs(tiny_dataset_dir, tmp_path_factory, _tokenizer_cache_in_tmp):
    """A 4-step run, and the same run stopped at step 2 then resumed from 'latest'; both with synthetic
    construction, so the exact-resume test also covers its seeded draws."""
    from stsynth_lib.controlnet.train import train_controlnet

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    erase = {"erase_building_fraction": 0.5}
    try:
        full = train_controlnet(_cfg(tiny_dataset_dir, tmp_path_factory.mktemp("full"), **erase))
        part_root = tmp_path_factory.mktemp("part")
        train_controlnet(_cfg(tiny_dataset_dir, part_root, max_train_steps=2, **erase))
        ckpts_after_first = sorted(p.name for p in (part_root / "test" / "controlnet" / "checkpoints").iterdir())
        resumed = train_controlnet(_cfg(tiny_dataset_dir, part_root, resume_from_checkpoint="latest", **erase))
    finally:
        torch.set_num_threads(old_threads)
    yield full, resumed, ckpts_after_first


def test_run_folder_and_logs(trained_runs):
    full, _, _ = trained_runs
    params = yaml.safe_load((full / "params.yaml").read_text())
    assert params["backbone"] == "tiny-random" and params["conditioning_channels"] == 5
    assert (full / "controlnet" / "config.json").is_file() and (full / "backbone" / "stsynth_backbone.json").is_file()
    with open(full / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert float(rows[0]["control_gain"]) == 0.0  # zero convolutions: the control adds nothing yet
    assert float(rows[0]["cond_gain"]) == 0.0
    assert float(rows[-1]["val_loss"]) != float(rows[-1]["val_loss_nocontrol"])  # ... and something after training
    assert all(np.isfinite(float(r["loss"])) for r in rows[1:])
    assert sorted(p.name for p in (full / "samples").iterdir()) == ["step-000000.png", "step-000002.png", "step-000004.png"]


def test_checkpoint_limit_and_exact_resume(trained_runs):
    from safetensors.torch import load_file

    full, resumed, ckpts_after_first = trained_runs
    assert ckpts_after_first == ["checkpoint-2"]
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["checkpoint-4"]  # kept-count limit 1
    state = json.loads((resumed / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    with open(resumed / "log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3, 4]
    wa = load_file(full / "controlnet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(resumed / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # resuming replays the same data, noise, timesteps and prompt dropout
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_training_erases_standing_buildings_from_the_condition(tiny_dataset_dir, tmp_path, monkeypatch):
    """Synthetic construction: each step's batch passes through erase_buildings (at the tile size, before the
    conditioning is built), which takes buildings out of the conditioning past image but never touches the future."""
    import stsynth_lib.controlnet.train as tr

    seen, erased, conditioned = [], [], []
    real, real_cond = tr.erase_buildings, tr.batch_conditioning

    def spy(batch, generator, fraction):
        out = real(batch, generator, fraction)
        seen.append((fraction, torch.equal(out["past"], batch["past"]), torch.equal(out["future"], batch["future"]),
                     int(batch["past_mask"].sum() - out["past_mask"].sum())))
        erased.append(out["past"].clone())
        return out

    def cond_spy(batch, *a, **k):
        conditioned.append(batch["past"].clone())
        return real_cond(batch, *a, **k)

    monkeypatch.setattr(tr, "erase_buildings", spy)
    monkeypatch.setattr(tr, "batch_conditioning", cond_spy)
    run_dir = tr.train_controlnet(_cfg(tiny_dataset_dir, tmp_path, max_train_steps=3, erase_building_fraction=1.0,
                                       validate_at_start=False, validation_steps=0))
    assert [f for f, *_ in seen] == [1.0, 1.0, 1.0]
    assert all(same_future for _, _, same_future, _ in seen)
    assert any(not same_past and cleared > 0 for _, same_past, _, cleared in seen)
    assert len(conditioned) == 3 and all(torch.equal(a, b) for a, b in zip(erased, conditioned))  # what it conditions on
    assert yaml.safe_load((run_dir / "params.yaml").read_text())["erase_building_fraction"] == 1.0
    seen.clear()
    tr.train_controlnet(_cfg(tiny_dataset_dir, tmp_path / "off", max_train_steps=1, validate_at_start=False,
                             validation_steps=0))
    assert seen == []  # 0 (the default): not called


def test_erasing_needs_labels_and_the_mask_channel(unlabelled_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.train import train_controlnet

    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ControlNetTrainConfig(erase_building_fraction=1.5)
    with pytest.raises(ValueError, match="use_mask"):
        ControlNetTrainConfig(erase_building_fraction=0.3, use_mask=False)
    with pytest.raises(ValueError, match="no building to erase"):
        train_controlnet(_cfg(unlabelled_dataset_dir, tmp_path, erase_building_fraction=0.3))


def test_nan_loss_stops_with_clear_message(tiny_dataset_dir, tmp_path, monkeypatch):
    import stsynth_lib.controlnet.train as tr

    def nan_loss(*a, **k):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(tr, "diffusion_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="mixed_precision"):
        tr.train_controlnet(_cfg(tiny_dataset_dir, tmp_path, validate_at_start=False, max_train_steps=1))


def test_cli_accepts_diffusers_style_flags(tmp_path):
    from stsynth_lib.controlnet.train import parse_args

    p = tmp_path / "p.yaml"
    p.write_text("max_train_steps: 7\nprofile: smoke\n")
    cfg = parse_args(["--params", str(p), "--pretrained_model", "/path/to/local/sd15", "--train-batch-size", "3",
                      "--dataset_dir", "data/x"])
    assert (cfg.max_train_steps, cfg.pretrained_model, cfg.train_batch_size) == (7, "/path/to/local/sd15", 3)
    with pytest.raises(ValueError, match="dataset_dir is not set"):  # never the smoke dataset by default
        parse_args(["--params", str(p)])


# --------------------------------------------------------------------------- generation


def test_sampler_matches_diffusers_pipeline(tiny):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from stsynth_lib.controlnet.generate import make_scheduler, sample_images

    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(tiny.unet, conditioning_channels=5).eval()
    with torch.no_grad():  # non-zero "zero convs" so that the control matters
        for n, p in cn.named_parameters():
            if n.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.normal_(0, 0.05)
    cond = torch.rand(2, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    lat = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    prompts = ["satellite image, July 2018", "satellite image, May 2019"]
    pipe = StableDiffusionControlNetPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet, controlnet=cn,
        scheduler=make_scheduler("unipc", tiny.noise_scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for gs in (1.0, 3.0):
        ours = sample_images(tiny, cn, cond, prompts, make_scheduler("unipc", tiny.noise_scheduler.config), 3, gs,
                             latents=lat)
        ref = pipe(prompts, image=cond, height=32, width=32, num_inference_steps=3, guidance_scale=gs,
                   latents=lat.clone(), output_type="pt").images
        torch.testing.assert_close(ours, ref * 2 - 1, atol=1e-5, rtol=0)
    no_ctrl = sample_images(tiny, cn, cond * 0, prompts, make_scheduler("unipc", tiny.noise_scheduler.config), 3, 1.0,
                            latents=lat)
    assert (no_ctrl - ours).abs().max() > 1e-3  # the conditioning reaches the images


def test_generated_geotiffs_carry_crs_and_transform(trained_runs, tiny_dataset_dir, tmp_path):
    import rasterio

    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.data.dataset import PairedTileDataset
    from stsynth_lib.predict.files import load_predictions

    full, _, _ = trained_runs
    out = generate_split(full, tiny_dataset_dir, "test", num_inference_steps=2, batch_size=3, max_pairs=4,
                         progress=False)
    assert out == full / "predictions" / "test"
    ds = PairedTileDataset(tiny_dataset_dir, "test", max_pairs=4)
    preds = load_predictions(out)
    assert sorted(preds) == sorted(int(p) for p in ds.pairs["pair_id"])
    for i in range(len(ds)):
        s = ds[i]
        pid = int(s["pair_id"])
        assert (out / f"{pid:06d}.png").is_file()
        with rasterio.open(out / f"{pid:06d}.tif") as src:
            assert src.count == 3 and src.dtypes[0] == "uint8" and src.shape == (32, 32)
            assert src.crs is not None and src.crs == rasterio.crs.CRS.from_user_input(s["crs"])
            np.testing.assert_allclose(tuple(src.transform)[:6], s["transform"].numpy(), rtol=0, atol=1e-9)
    # per-pair seeds: the batch size does not change the images
    other = generate_split(full, tiny_dataset_dir, "test", out_dir=tmp_path / "b1", num_inference_steps=2,
                           batch_size=1, max_pairs=4, progress=False)
    again = load_predictions(other)
    for k in preds:  # equal up to float summation order in batched kernels (at most 1 grey level)
        assert np.abs(preds[k].astype(int) - again[k].astype(int)).max() <= 1, k


def test_bf16_mixed_precision_run_on_cpu(tiny_dataset_dir, tmp_path):
    """The mixed-precision paths (frozen parts in bf16, fp32 VAE and loss, autocast ControlNet) run end to end."""
    from accelerate.state import AcceleratorState

    from stsynth_lib.controlnet.train import train_controlnet

    try:
        run = train_controlnet(_cfg(tiny_dataset_dir, tmp_path, mixed_precision="bf16", max_train_steps=2,
                                    checkpointing_steps=0))
    finally:  # Accelerate's process-wide state must not leak bf16 into later tests
        AcceleratorState._reset_state()
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["weight_dtype"] == "bfloat16" and params["mixed_precision_resolved"] == "bf16"
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(np.isfinite(float(r["loss"])) for r in rows if r["loss"])
    assert (run / "samples" / "step-000002.png").is_file() and (run / "checkpoints" / "checkpoint-2").is_dir()


def test_fp16_on_cpu_is_refused(tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.train import train_controlnet

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="fp16"):
        train_controlnet(_cfg(tiny_dataset_dir, tmp_path, mixed_precision="fp16", device="cpu"))


def test_cond_embedding_init_keeps_the_input_signal(tiny):
    """With PyTorch's default init the conditioning encoder's output barely depends on its input; He init keeps it."""
    import torch.nn.functional as F
    from diffusers import ControlNetModel

    from stsynth_lib.controlnet.losses import reinit_cond_embedding, zero_conv_parameters

    def input_dependence(cn):
        emb = cn.controlnet_cond_embedding
        c = torch.rand(2, 5, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            h = F.silu(emb.conv_in(c))
            for blk in emb.blocks:
                h = F.silu(blk(h))
        return float((h[0] - h[1]).abs().mean() / h.abs().mean())

    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(tiny.unet, conditioning_channels=5)
    assert input_dependence(cn) < 0.05
    reinit_cond_embedding(cn)
    assert input_dependence(cn) > 0.3
    assert all(float(p.detach().abs().max()) == 0 for p in zero_conv_parameters(cn)[0])  # zero convs untouched


def test_local_pretrained_folder_path(tiny, tiny_dataset_dir, tmp_path):
    """A local diffusers folder (the offline route for SD 1.5) trains and generates; it is recorded as pretrained."""
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.train import train_controlnet

    folder = save_backbone(tiny, tmp_path / "local_sd")
    (folder / "stsynth_backbone.json").unlink()  # a plain diffusers folder, as `hf download` leaves it
    run = train_controlnet(_cfg(tiny_dataset_dir, tmp_path / "runs", pretrained_model=str(folder), max_train_steps=1,
                                validate_at_start=False, validation_steps=0, checkpointing_steps=0))
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["backbone"] == "pretrained" and params["backbone_path"] == str(folder)
    assert not (run / "backbone").exists()  # the pretrained weights are not copied into the run
    out = generate_split(run, tiny_dataset_dir, "test", num_inference_steps=1, max_pairs=2, progress=False)
    assert len(list(out.glob("*.tif"))) == 2
