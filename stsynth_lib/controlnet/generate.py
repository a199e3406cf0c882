"""Generate future images with a trained ControlNet (denoising loop + test-split generation).

:func:`sample_images` is the denoising loop of diffusers'
``StableDiffusionControlNetPipeline`` (classifier-free guidance with the control
applied to both halves), written out so that the VAE can stay in fp32, each
sample has its own seeded generator (results do not depend on the batch size)
and multi-channel conditioning tensors are passed through untouched (the
pipeline's image processor treats a 4-channel tensor as latents). There is no
safety checker: generated satellite tiles never go through one.

:class:`ControlNetPredictor` is a trained run ready to sample (the run's prompts and
conditioning, the chosen sampling settings); :func:`generate_split` runs it over a split
with the one split loop :func:`stsynth_lib.predict.split.predict_split` (GeoTIFF with
the input tile's CRS and geotransform + PNG + index.csv): sample 0 of each pair in the
predictions folder itself (what chapter 6 scores), further samples of the same pairs
(``num_samples_per_pair > 1``) in ``<folder>/samples/sample-<k>/``, seeded by
:func:`stsynth_lib.predict.split.sample_seed`. ``prompt_only=True`` samples the bare
backbone from the prompt alone (no ControlNet) on the same pairs and seeds.

``strength < 1`` starts the denoising from the past image instead of pure noise (SDEdit; diffusers'
``StableDiffusionControlNetImg2ImgPipeline``): the past image's VAE latent is noised to the timestep where the last
``strength`` share of the schedule begins and only those steps run. ``strength = 1`` is pure noise, exactly the
loop without it. :mod:`stsynth_lib.controlnet.strength` chooses it on validation and records it in the run folder
(``generation.yaml``), which generation and the predictor then use by default.

A ``diffusion_target: residual`` run (:mod:`stsynth_lib.controlnet.residual`) denoises the scaled latent change from
the past image and decodes ``z_past + r / residual_scale`` (the scale read from the run's ``residual.yaml``); its
``strength < 1`` starts from ``r = 0`` (no change) noised to the strength's first timestep.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from stsynth_lib.controlnet.backbone import Backbone, image_latents, load_backbone  # noqa: F401 (image_latents: re-exported)
from stsynth_lib.controlnet.conditioning import (
    batch_conditioning,
    batch_prompts,
    resize_batch,
    resize_spatial,
)
from stsynth_lib.controlnet.residual import run_residual_scale
from stsynth_lib.data.dataset import check_context_offsets
from stsynth_lib.options.sampling import RESIDUAL_DECODES  # noqa: F401 (declared once, with the option)
from stsynth_lib.predict.base import Predictor, batch_seeds
from stsynth_lib.predict.split import SAMPLING_FILE, predict_split

SCHEDULERS = ("unipc", "ddim", "dpmsolver++", "euler", "ddpm")
GENERATION_FILE = "generation.yaml"  # run folder: the img2img strength chosen on validation, and its sampling settings


def make_scheduler(name: str, base_config: Any):
    """An inference scheduler built from the backbone's training-scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    classes = {
        "unipc": UniPCMultistepScheduler,
        "ddim": DDIMScheduler,
        "dpmsolver++": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "ddpm": DDPMScheduler,
    }
    key = str(name).lower()
    if key not in classes:
        raise ValueError(f"scheduler={name!r} is not supported; choose one of {SCHEDULERS}")
    return classes[key].from_config(base_config)


def text_embeddings(backbone: Backbone, prompts: Sequence[str], device, dtype=None) -> torch.Tensor:
    """Tokenize (padded to the tokenizer's length) and encode ``prompts``; gradients flow (stage 1 trains the
    tiny text encoder). :func:`encode_prompts` is the same under ``no_grad``."""
    tok = backbone.tokenizer(
        list(prompts), padding="max_length", max_length=backbone.tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    )
    emb = backbone.text_encoder(tok.input_ids.to(device))[0]
    return emb.to(dtype) if dtype is not None else emb


@torch.no_grad()
def encode_prompts(backbone: Backbone, prompts: Sequence[str], device, dtype=None) -> torch.Tensor:
    return text_embeddings(backbone, prompts, device, dtype)


@torch.no_grad()
def sample_images(
    backbone: Backbone,
    controlnet,
    cond: torch.Tensor,
    prompts: Sequence[str],
    scheduler,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    seeds: Sequence[int] | None = None,
    controlnet_conditioning_scale: float = 1.0,
    weight_dtype: torch.dtype | None = None,
    latents: torch.Tensor | None = None,
    init_image: torch.Tensor | None = None,
    strength: float = 1.0,
    residual_scale: float | None = None,
    residual_decode: str = "latent",
) -> torch.Tensor:
    """Denoise from seeded noise to images ``(B, 3, H, W)`` in [-1, 1] (float32, on CPU).

    ``residual_scale`` (a ``diffusion_target: residual`` run, :mod:`stsynth_lib.controlnet.residual`): the loop
    denoises the scaled latent change ``r`` and the decoded latent is ``z_start + r / residual_scale``, with
    ``z_start`` the posterior mean of ``init_image`` (the past image, required); ``strength < 1`` then starts from
    ``r = 0`` (no change) noised to the strength's first timestep, the residual analogue of SDEdit.
    ``residual_decode`` (residual runs): ``"latent"`` returns that decoded image, so every pixel passes through the
    autoencoder; ``"difference"`` returns ``past + decode(z_start + r / s) - decode(z_start)``: the past image with
    the decoded change added, so "no change" (``r = 0``) is the past image exactly and the autoencoder's
    reconstruction error of the past cancels (see :data:`RESIDUAL_DECODES`).

    ``strength < 1`` (img2img / SDEdit) needs ``init_image`` ``(B, C, H, W)`` in [-1, 1] (the past image): its VAE
    latent (posterior mean) is noised with the seeded noise to the first of the last ``int(steps * strength)``
    timesteps, and only those run. ``strength = 1`` ignores ``init_image``.

    ``cond`` is the ``(B, C, H, W)`` conditioning in [0, 1]; ``guidance_scale``
    > 1 enables classifier-free guidance against the empty prompt. ``controlnet=None``
    denoises with the bare backbone UNet from the prompt alone (no control residuals;
    ``cond`` then only gives the batch size, image size and device).
    """
    device = cond.device
    dtype = weight_dtype or next(backbone.unet.parameters()).dtype
    b, _, h, w = cond.shape
    f = backbone.vae_scale_factor
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not divisible by the VAE factor {f}")
    if latents is None:
        shape = (1, backbone.unet.config.in_channels, h // f, w // f)
        seeds = list(range(b)) if seeds is None else [int(s) for s in seeds]
        latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    latents, timesteps, z_start = _start_latents(backbone, scheduler, latents, num_inference_steps, strength,
                                                 init_image, residual_scale, (h, w), device)
    do_cfg = guidance_scale > 1.0
    emb = encode_prompts(backbone, prompts, device, dtype)
    if do_cfg:
        emb = torch.cat([encode_prompts(backbone, [""] * b, device, dtype), emb])
        cond = torch.cat([cond, cond])
    cond = cond.to(device, dtype)
    for t in timesteps:
        x = torch.cat([latents] * 2) if do_cfg else latents
        x = scheduler.scale_model_input(x, t).to(dtype)
        extra = {}
        if controlnet is not None:
            down, mid = controlnet(x, t, encoder_hidden_states=emb, controlnet_cond=cond,
                                   conditioning_scale=controlnet_conditioning_scale, return_dict=False)
            extra = dict(down_block_additional_residuals=[d.to(dtype) for d in down],
                         mid_block_additional_residual=mid.to(dtype))
        eps = backbone.unet(x, t, encoder_hidden_states=emb, return_dict=False, **extra)[0].float()
        if do_cfg:
            e_u, e_c = eps.chunk(2)
            eps = e_u + guidance_scale * (e_c - e_u)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]
    img = _to_image(backbone, latents, z_start, residual_scale, residual_decode, init_image, device)
    if not torch.isfinite(img).all():
        raise FloatingPointError(
            "generated images contain NaN/Inf (black images): keep the VAE in fp32 and prefer bf16 over fp16."
        )
    return img


def check_residual_decode(residual_decode: str, residual: bool, why: str = "pass residual_scale") -> None:
    """Refuse a decoding that is not one of :data:`RESIDUAL_DECODES`, or one other than ``"latent"`` without a
    sampled change to decode (``residual``: a ``diffusion_target: residual`` run); ``why`` ends that message."""
    if residual_decode not in RESIDUAL_DECODES:
        raise ValueError(f"residual_decode must be one of {RESIDUAL_DECODES}, got {residual_decode!r}")
    if residual_decode != "latent" and not residual:
        raise ValueError(f"residual_decode {residual_decode!r} decodes a sampled change, which only a "
                         f"diffusion_target: residual run draws: {why}")


def _to_image(backbone: Backbone, latents: torch.Tensor, z_start: torch.Tensor | None, residual_scale,
              residual_decode: str, init_image: torch.Tensor | None, device) -> torch.Tensor:
    """The denoised latents as images in [-1, 1] (CPU): decoded whole, or for a residual run ``z_start`` plus the
    change decoded (``residual_decode="latent"``) or the past image plus the decoded change (``"difference"``)."""
    check_residual_decode(residual_decode, z_start is not None)
    if z_start is not None:
        latents = z_start + latents.float() / float(residual_scale)
    img = _decode(backbone, latents, device)
    if z_start is not None and residual_decode == "difference":
        past = init_image[:, : img.shape[1]].float()
        if tuple(past.shape[-2:]) != tuple(img.shape[-2:]):
            past = torch.nn.functional.interpolate(past, size=img.shape[-2:], mode="bilinear", align_corners=False,
                                                   antialias=True)
        img = past.cpu() + img - _decode(backbone, z_start, device)
    return img.clamp(-1, 1)


def _decode(backbone: Backbone, latents: torch.Tensor, device) -> torch.Tensor:
    """Scaled latents to images in float32 on the CPU (unclamped)."""
    vae = backbone.vae
    with torch.autocast(device_type=device.type, enabled=False):  # the VAE decodes in its own dtype (fp32)
        img = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
    return img.float().cpu()


def _start_latents(backbone: Backbone, scheduler, noise: torch.Tensor, num_inference_steps: int, strength: float,
                   init_image: torch.Tensor | None, residual_scale: float | None, size: tuple[int, int], device):
    """(the first latents, the timesteps that run, ``z_start``) of :func:`sample_images`: pure noise at strength 1,
    else the start (the past image's latent; ``r = 0`` for residual diffusion) noised to the strength's first
    timestep; ``z_start`` is the past image's latent that residual diffusion adds the sampled change to (else None)."""
    b = noise.shape[0]
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    z_start = None
    if residual_scale is not None:
        if init_image is None:
            raise ValueError("residual diffusion adds the sampled change to the past image's latent: pass init_image "
                             "(the past image, in [-1, 1])")
        if not float(residual_scale) > 0:
            raise ValueError(f"residual_scale must be > 0, got {residual_scale}")
        z_start = image_latents(backbone, init_image.to(device), size)
    if float(strength) < 1.0:
        if init_image is None:
            raise ValueError("strength < 1 starts from an image: pass init_image (the past image, in [-1, 1])")
        timesteps, begin = img2img_timesteps(scheduler, num_inference_steps, strength)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        # residual: the start is "no change" (r = 0); image: the past image's latent
        init = torch.zeros_like(z_start) if z_start is not None else image_latents(backbone, init_image.to(device),
                                                                                   size)
        return scheduler.add_noise(init, noise.to(device, torch.float32), timesteps[:1].repeat(b)), timesteps, z_start
    return noise.to(device, torch.float32) * scheduler.init_noise_sigma, timesteps, z_start


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """(the timesteps that run, their start index) for ``strength``: the last ``int(steps * strength)`` of the
    scheduler's (already set) schedule, as diffusers' img2img pipelines take them (``tests/test_img2img.py`` compares
    with ``StableDiffusionControlNetImg2ImgPipeline.get_timesteps``); a 1e-6 slack keeps 0.3 x 10 at 3 steps where
    float rounding would give 2.99...)."""
    n_run = min(int(num_inference_steps * float(strength) + 1e-6), num_inference_steps)
    if n_run < 1:
        raise ValueError(f"strength {strength} x {num_inference_steps} inference steps runs no step: raise the "
                         f"strength to at least {1 / num_inference_steps:.3g} or the number of steps")
    begin = (num_inference_steps - n_run) * scheduler.order
    return scheduler.timesteps[begin:], begin


def chosen_generation(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What chapter 5 chose on validation for a ControlNet run (``<run>/generation.yaml``): ``img2img_strength`` and
    the sampling settings it was chosen with (``scheduler``, ``num_inference_steps``, ``guidance_scale``,
    ``controlnet_conditioning_scale``); empty when nothing was chosen."""
    path = Path(run_dir) / GENERATION_FILE
    if not path.is_file():
        return {}
    rec = yaml.safe_load(path.read_text()) or {}
    if "img2img_strength" not in rec:
        raise ValueError(f"{path} has no img2img_strength: it is not a run folder's generation record "
                         f"(a predictions folder's settings are in {SAMPLING_FILE})")
    return rec


def chosen_strength(run_dir: str | os.PathLike) -> float:
    """The img2img strength chosen on validation for a ControlNet run (``<run>/generation.yaml``), or 1.0 (pure
    noise) when none was chosen."""
    return float(chosen_generation(run_dir).get("img2img_strength", 1.0))


def load_trained(run_dir: str | os.PathLike, device="auto", dtype: torch.dtype | None = None):
    """(backbone, controlnet, train params) of a finished run folder written by ``train_controlnet``.

    Device and precision come from :func:`stsynth_lib.training.resolve_device`: on a GPU the precision the run
    trained in, on a CPU fp32 (unless ``dtype`` says otherwise).
    """
    from diffusers import ControlNetModel

    from stsynth_lib.training import resolve_device

    run_dir = Path(run_dir)
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    cn_dir = run_dir / "controlnet"
    if not (cn_dir / "config.json").is_file():
        raise FileNotFoundError(f"{cn_dir} has no trained ControlNet: train it first (notebook 05 / train_controlnet).")
    setup = resolve_device(str(device or "auto").split(":")[0], "auto", channels_last=False, cpu_auto_precision="no")
    dev = torch.device("cuda" if setup.on_cuda else "cpu")
    backbone = load_backbone(params["backbone_path"]).freeze()
    controlnet = ControlNetModel.from_pretrained(cn_dir).eval()
    if dtype is None:  # the precision the run trained in on a GPU; fp32 on a CPU
        mp = params.get("mixed_precision_resolved", "no") if setup.on_cuda else "no"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
    backbone.to(dev, dtype)
    controlnet.to(dev) if next(controlnet.parameters()).dtype == dtype else controlnet.to(dev, dtype)
    return backbone, controlnet, params


class ControlNetPredictor(Predictor):
    """A trained ControlNet with its backbone, sampling as chapter 5 chose (the run's prompts and conditioning,
    seeded noise per image). ``None`` settings take what was chosen on validation and drawn with
    (``generation.yaml``, :func:`chosen_generation`), else UniPC, 20 steps, no guidance, pure noise (strength 1).
    ``prompt_only`` samples the bare backbone from the prompt alone (no ControlNet; same prompts, seeds and
    scheduler). A ``diffusion_target: residual`` run samples the change from the past image with the residual scale
    recorded in its folder (:func:`~stsynth_lib.controlnet.residual.run_residual_scale`; prompt-only too, so both
    add their sampled change to the same past). A run trained with ``context_offsets_months`` declares them
    (``context_offsets``, ``needs_context``) like a cGAN predictor, so :meth:`prepare_dataset` opens a split with
    those frames and ``predict`` / ``python -m stsynth_lib.predict`` ask for them."""

    family = "ControlNet"

    def __init__(self, run_dir: str | os.PathLike, device: str = "cpu", scheduler: str | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 strength: float | None = None, controlnet_conditioning_scale: float | None = None,
                 prompt_only: bool = False, residual_decode: str | None = None):
        self.backbone, self.controlnet, self.params = load_trained(run_dir, device)
        self.device = next(self.controlnet.parameters()).device
        chosen = chosen_generation(run_dir)
        pick = lambda value, key, default: value if value is not None else chosen.get(key, default)  # noqa: E731
        self.scheduler_name = pick(scheduler, "scheduler", "unipc")
        self.scheduler = make_scheduler(self.scheduler_name, self.backbone.noise_scheduler.config)
        self.steps = int(pick(num_inference_steps, "num_inference_steps", 20))
        self.guidance_scale = float(pick(guidance_scale, "guidance_scale", 1.0))
        self.strength = float(pick(strength, "img2img_strength", 1.0))
        self.conditioning_scale = float(pick(controlnet_conditioning_scale, "controlnet_conditioning_scale", 1.0))
        self.prompt_only = bool(prompt_only)
        self.uses_mask = bool(self.params["use_mask"])
        self.residual_scale = run_residual_scale(run_dir, self.params)  # None: the run learned the image
        self.residual_decode = str(pick(residual_decode, "residual_decode", "latent"))
        check_residual_decode(self.residual_decode, self.residual_scale is not None, f"{run_dir} learned the image")
        self.tile_size_px = self.trained_tile_size_px = int(self.params["tile_size_px"])
        # the run's past frames (runs older than the option: None); the split loop, the tree and predict() pass them
        self.context_offsets = check_context_offsets(self.params.get("context_offsets_months"))

    def generate(self, batch: dict[str, Any], seed: int | Sequence[int]) -> torch.Tensor:
        """Images of a collated batch on its own pixel grid: sampled at the run's resolution from the noise seeds
        ``seed`` (one per image, or an int: ``seed + i``), resized back to the batch's tile size."""
        p = self.params
        b = resize_batch(batch, p["resolution_px"])
        cond = batch_conditioning(b, p["use_gap_plane"], p["gap_scale_months"], p["use_mask"],
                                  self.context_offsets if self.needs_context else None).to(self.device)
        prompts = batch_prompts(batch, p["prompt_template"], p["empty_prompt"])
        imgs = sample_images(self.backbone, None if self.prompt_only else self.controlnet, cond, prompts,
                             self.scheduler, self.steps, self.guidance_scale, batch_seeds(seed, len(prompts)),
                             self.conditioning_scale, init_image=b["past"].to(self.device), strength=self.strength,
                             residual_scale=self.residual_scale, residual_decode=self.residual_decode)
        return resize_spatial(imgs, batch["past"].shape[-1])

    def sampling_record(self) -> dict[str, Any]:
        """How this predictor draws (a predictions folder's ``sampling.yaml``, without the split's own keys)."""
        rec = {"strength": self.strength, "scheduler": self.scheduler_name, "num_inference_steps": self.steps,
               "guidance_scale": self.guidance_scale, "controlnet_conditioning_scale": self.conditioning_scale}
        if self.residual_scale is not None:
            rec.update(diffusion_target="residual", residual_scale=self.residual_scale,
                       residual_decode=self.residual_decode)
        return rec


def generate_split(
    run_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    scheduler: str = "unipc",
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    controlnet_conditioning_scale: float = 1.0,
    max_pairs: int | None = None,
    device: str = "auto",
    write_png: bool = True,
    progress: bool = True,
    num_samples_per_pair: int = 1,
    prompt_only: bool = False,
    strength: float | None = None,
    subsample_seed: int | None = None,
    residual_decode: str | None = None,
) -> Path:
    """Generate the future image of every pair of ``split`` and save them as predictions.

    A :class:`ControlNetPredictor` run over the split by :func:`stsynth_lib.predict.split.predict_split`.
    Prompts and conditioning use the run's own training options (template,
    gap plane), so generation sees exactly what training saw. Sample ``k`` of
    pair ``i`` uses the seed :func:`~stsynth_lib.predict.split.sample_seed` ``= seed + i + k * 1_000_003``;
    sample 0 (seed ``seed + pair_id``) is written in the predictions folder itself,
    samples ``k >= 1`` in ``<folder>/samples/sample-<k>/`` (same format), see
    :func:`~stsynth_lib.predict.split.sample_dir`. ``prompt_only`` samples the bare backbone from the prompt
    alone (no ControlNet; same pairs, prompts, seeds and scheduler), by default into
    ``<run_dir>/predictions_prompt_only/<split>`` so the ControlNet's images stay.
    ``strength`` (img2img from the past image, see :func:`sample_images`; prompt-only
    too, so both start from the same noised past): None takes the run's validated
    value (:func:`chosen_strength`, 1.0 when none). ``subsample_seed`` with
    ``max_pairs`` takes a seeded random subset of the split (a seeded shuffle, the
    same subset as ``evaluate_models(max_pairs=..., seed=...)``) instead of its first
    pairs. ``residual_decode`` (residual runs, see :func:`sample_images`): None takes the run's validated value
    (``generation.yaml``, else "latent"). The folder's ``sampling.yaml`` records how its images were drawn.
    Returns the predictions folder (default ``<run_dir>/predictions/<split>``),
    which is cleared first, its ``samples/`` included.
    """
    from stsynth_lib.data.dataset import PairedTileDataset

    if int(num_samples_per_pair) < 1:
        raise ValueError(f"num_samples_per_pair must be >= 1, got {num_samples_per_pair}")
    run_dir = Path(run_dir)
    predictor = ControlNetPredictor(run_dir, device, scheduler, num_inference_steps, guidance_scale, strength,
                                    controlnet_conditioning_scale, prompt_only,
                                    residual_decode)  # None: the chosen strength / decode
    ds = PairedTileDataset(dataset_dir, split=split, max_pairs=max_pairs, subsample_seed=subsample_seed,
                           context_offsets_months=predictor.context_offsets if predictor.needs_context else None)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} has no pairs: nothing to generate")
    _check_size(ds.tile_size_px, predictor.params)
    _warn_other_dataset(dataset_dir, predictor.params)
    default = run_dir / ("predictions_prompt_only" if prompt_only else "predictions") / split
    what = ("prompt only" if prompt_only else scheduler) + (f", img2img strength {predictor.strength:g}"
                                                            if predictor.strength < 1 else "") \
        + (f", residual ({predictor.residual_decode})" if predictor.residual_scale is not None else "")
    record = {**predictor.sampling_record(), "seed": int(seed), "prompt_only": bool(prompt_only),
              "num_samples_per_pair": int(num_samples_per_pair), "max_pairs": max_pairs,
              "subsample_seed": subsample_seed}  # how these were drawn
    return predict_split(predictor, ds, Path(out_dir) if out_dir else default, seed=seed,
                         num_samples=num_samples_per_pair, batch_size=batch_size, progress=progress,
                         write_png=write_png, record=record,
                         desc=f"generate {split} ({what}, {num_inference_steps} steps)")


def _warn_other_dataset(dataset_dir, params: dict) -> None:
    if Path(dataset_dir).resolve() != Path(params["dataset_dir"]).resolve():
        import warnings

        warnings.warn(f"generating on {dataset_dir} with a ControlNet trained on {params['dataset_dir']}: "
                      "the evaluation compares like with like only when both are the same dataset", stacklevel=3)


def _check_size(tile_px: int, params: dict) -> None:
    trained = params.get("tile_size_px")
    if trained and int(trained) != int(tile_px):
        raise ValueError(
            f"the ControlNet was trained on {trained} px tiles but this dataset has {tile_px} px tiles; "
            "train and generate on the same dataset so that the evaluation compares like with like."
        )
