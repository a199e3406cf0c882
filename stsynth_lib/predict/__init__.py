"""Apply a trained model to images in memory: no tile store, no dataset, no batch dicts to assemble.

    >>> from stsynth_lib.predict import load_predictor
    >>> predictor = load_predictor("runs/smoke/pix2pix")          # or attention_unet, controlnet
    >>> future = predictor.predict(past, past_date="2019-01", future_date="2019-07",
    ...                            future_mask=mask)              # uint8 (C, H, W) in, uint8 (C, H, W) out

``past`` is a uint8 array as rasterio reads it, ``(C, H, W)`` (or a batch ``(N, C, H, W)``), with the run's
bands (RGB by default) and of the run's tile size. ``future_mask`` (the building footprints at the future
date, {0, 1}, ``(H, W)`` or ``(N, H, W)``) is required by models trained with mask guidance and refused by
models trained without it. Dates are ``"YYYY-MM"`` strings, ``(year, month)`` tuples or ``datetime.date``.
The family is read from the run folder: ``model.yaml`` (cGANs) or ``controlnet/`` (ControlNet).

Whole SpaceNet 7 trees, any image size (the command line, :mod:`stsynth_lib.predict.cli`; tiles stitched with blended
overlaps, :mod:`stsynth_lib.predict.scene`; pairs, masks and outputs, :mod:`stsynth_lib.predict.tree`; the prediction
files that evaluation reads, :mod:`stsynth_lib.predict.files`)::

    python -m stsynth_lib.predict --run runs/sn7/pix2pix --data /data/SN7_buildings_train --out predictions/sn7
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from stsynth_lib.data.dataset import to_uint8

# precision of a cGAN predictor: no = fp32 (the default, the chapters' numbers) | bf16 (autocast) | auto (resolve_device)
INFERENCE_PRECISIONS = ("no", "bf16", "auto")

DateLike = str | tuple[int, int] | _dt.date


def parse_month(value: DateLike) -> tuple[int, int]:
    """``"2019-07"`` / ``"2019-07-01"`` / ``(2019, 7)`` / ``date(2019, 7, 1)`` -> ``(2019, 7)``."""
    if isinstance(value, _dt.date):
        return value.year, value.month
    if isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            year, month = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"date {value!r}: expected 'YYYY-MM' (e.g. '2019-07')")
    else:
        year, month = (int(v) for v in value)
    if not 1 <= month <= 12:
        raise ValueError(f"date {value!r}: month {month} is not in 1..12")
    return year, month


def _images(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name} must be (C, H, W) or (N, C, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255] as in the GeoTIFFs (got {a.dtype}); convert it first, "
                         "e.g. with stsynth_lib.data.io.to_uint8_image for 16-bit imagery")
    return a


def _masks(arr: np.ndarray | None, n: int, hw: tuple[int, int], name: str) -> np.ndarray:
    """``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` 0/1 masks -> float32 ``(N, 1, H, W)`` (zeros for ``None``)."""
    if arr is None:
        return np.zeros((n, 1, *hw), np.float32)
    m = np.asarray(arr)
    m = m[None, None] if m.ndim == 2 else (m[:, None] if m.ndim == 3 else m)
    if m.ndim == 4 and m.shape[0] == 1 and n > 1:
        m = np.repeat(m, n, 0)
    if m.shape != (n, 1, *hw):
        raise ValueError(f"{name} must be (H, W) or (N, H, W) matching the images {hw}, got shape {np.shape(arr)}")
    if not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 values (building footprints), got values in [{m.min()}, {m.max()}]")
    return m.astype(np.float32)


def context_fields(past: np.ndarray, gap: int, offsets: Sequence[int | str],
                   context: Mapping[int | str, np.ndarray | None] | None) -> dict[str, torch.Tensor]:
    """The ``context*`` keys of a batch: offset 0 is ``past`` (uint8 (N, C, H, W)), every other offset the uint8
    image ``context[offset]`` (shaped like ``past``; missing or ``None``: absent). Present frames count as valid."""
    from stsynth_lib.data.dataset import check_context_offsets, last_year_shift

    offsets, context = check_context_offsets(offsets), dict(context or {})
    unknown = [o for o in context if o not in offsets]
    if unknown:
        raise ValueError(f"context offsets {unknown} are not among the model's {list(offsets)}")
    n = past.shape[0]
    frames = np.zeros((n, len(offsets), *past.shape[1:]), np.float32)
    present, ages = np.zeros((n, len(offsets)), bool), np.zeros((n, len(offsets)), np.float32)
    for k, o in enumerate(offsets):
        img = past if o == 0 else context.get(o)
        if img is None:
            continue
        img = _images(img, f"context[{o!r}]")
        if img.shape != past.shape:
            raise ValueError(f"context[{o!r}] has shape {img.shape}; it must match past {past.shape}")
        shift = last_year_shift(o)
        if shift is not None and gap > 12 - shift:
            raise ValueError(f"context[{o!r}]: that month (future_date - {12 - shift} months) is after past_date "
                             f"when the gap is {gap} months (> {12 - shift}); leave it out")
        age = 12 - shift if shift is not None else gap - o
        frames[:, k], present[:, k], ages[:, k] = img.astype(np.float32) / 127.5 - 1.0, True, age
    valid = np.broadcast_to(present[:, :, None, None, None], (n, len(offsets), 1, *past.shape[2:]))
    return {"context": torch.from_numpy(frames), "context_valid": torch.from_numpy(valid.astype(np.float32)),
            "context_present": torch.from_numpy(present), "context_age_months": torch.from_numpy(ages)}


def make_batch(past: np.ndarray, past_date: DateLike, future_date: DateLike, future_mask: np.ndarray | None = None,
               past_mask: np.ndarray | None = None, valid: np.ndarray | None = None, aoi: str = "custom",
               context: Mapping[int | str, np.ndarray | None] | None = None,
               context_offsets: Sequence[int | str] | None = None) -> dict[str, Any]:
    """A collated batch with the keys of ``PairedTileDataset`` samples, built from arrays (for any model).

    ``context_offsets`` (a model's ``context_offsets_months``) adds the ``context*`` keys, from ``past`` (offset 0)
    and ``context`` ({offset: uint8 image like ``past``}; an offset left out is absent): see :func:`context_fields`.
    """
    imgs = _images(past, "past")
    n, _, h, w = imgs.shape
    (y0, m0), (y1, m1) = parse_month(past_date), parse_month(future_date)
    gap = (y1 - y0) * 12 + (m1 - m0)
    if gap < 1:
        raise ValueError(f"future_date {future_date!r} must be at least one month after past_date {past_date!r}")
    x = torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1.0)
    valid_t = torch.from_numpy(_masks(valid, n, (h, w), "valid")) if valid is not None else torch.ones(n, 1, h, w)
    full = lambda v, dtype=torch.int64: torch.full((n,), v, dtype=dtype)
    extra = context_fields(imgs, gap, context_offsets, context) if context_offsets is not None else {}
    if 0 in (context_offsets or ()):  # the past frame's validity, as the dataset gives it
        extra["context_valid"][:, list(context_offsets).index(0)] = valid_t
    return {**extra,
        "past": x, "future": torch.zeros_like(x),
        "past_mask": torch.from_numpy(_masks(past_mask, n, (h, w), "past_mask")),
        "future_mask": torch.from_numpy(_masks(future_mask, n, (h, w), "future_mask")),
        "has_mask": torch.full((n,), future_mask is not None, dtype=torch.bool),
        "past_valid": valid_t, "future_valid": valid_t, "valid": valid_t,
        "gap_months": full(float(gap), torch.float32), "past_month": full(m0), "future_month": full(m1),
        "past_year": full(y0), "future_year": full(y1), "transform": torch.zeros(n, 6, dtype=torch.float64),
        "crs": [""] * n, "aoi": [aoi] * n, "pair_id": torch.arange(n),
    }


def inputs_from_sample(sample: dict[str, Any], predictor: Predictor | None = None) -> dict[str, Any]:
    """The plain arrays a user would have for one ``PairedTileDataset`` sample: ``past`` uint8 ``(C, H, W)``,
    ``"YYYY-MM"`` dates and, when ``predictor`` uses masks (or none is given), the 0/1 ``future_mask``. For a
    predictor that reads context frames, also ``context`` (``{offset: uint8 image}``, absent months left out): the
    sample must then come from a dataset opened with the predictor's offsets (:func:`predictor_sample`)."""
    mask = sample["future_mask"][0].numpy().astype(np.uint8)
    out = {"past": to_uint8(sample["past"]),
           "past_date": f"{int(sample['past_year'])}-{int(sample['past_month']):02d}",
           "future_date": f"{int(sample['future_year'])}-{int(sample['future_month']):02d}",
           "future_mask": mask if predictor is None or predictor.uses_mask else None,
           **({"past_mask": sample["past_mask"][0].numpy().astype(np.uint8)}
              if predictor is not None and predictor.uses_past_mask else {})}
    if predictor is not None and predictor.needs_context:
        offsets = list(predictor.context_offsets)
        if "context" not in sample or sample["context"].shape[0] != len(offsets):
            raise ValueError(f"this {predictor.family} model reads the frames at offsets {offsets}, but the sample "
                             "does not carry them: take it from predictor_sample(dataset, i, predictor) or from "
                             f"PairedTileDataset(..., context_offsets_months={offsets})")
        out["context"] = {o: to_uint8(sample["context"][k]) for k, o in enumerate(offsets)
                          if o != 0 and bool(sample["context_present"][k])}
    return out


def predictor_sample(dataset, index: int, predictor: Predictor) -> dict[str, Any]:
    """Sample ``index`` of a ``PairedTileDataset`` with the context frames ``predictor`` reads (if any)."""
    from stsynth_lib.evaluate.generator import dataset_for_guidance

    return dataset_for_guidance(dataset, getattr(predictor, "guidance", None))[int(index)]


class Predictor:
    """A trained model ready to predict futures from arrays. Use :func:`load_predictor`."""

    family: str = ""
    uses_mask: bool = False
    uses_past_mask: bool = False
    tile_size_px: int | None = None  # the input size the model requires (None: any multiple of its downsampling)
    trained_tile_size_px: int = 0  # the tile size it was trained on (whole images are cut into such tiles)
    n_bands: int = 3
    context_offsets: tuple | None = None  # the run's context_offsets_months (None: the past image only)

    @property
    def needs_context(self) -> bool:
        """True when the model reads context frames besides the past image (``context=`` of :meth:`predict`)."""
        return any(o != 0 for o in (self.context_offsets or ()))

    def predict(self, past: np.ndarray, past_date: DateLike, future_date: DateLike,
                future_mask: np.ndarray | None = None, past_mask: np.ndarray | None = None,
                seed: int = 0, aoi: str = "custom", context: Mapping[int | str, np.ndarray | None] | None = None,
                ) -> np.ndarray:
        """The predicted future, uint8 with the shape of ``past``. ``context``: for a model trained with
        ``context_offsets_months``, ``{offset: uint8 image like past}`` (e.g. ``{-1: the month before past_date,
        "same_month_last_year": ...}``; an offset left out counts as a missing month)."""
        if self.needs_context and context is None:
            raise ValueError(f"this {self.family} model was trained with context frames at offsets "
                             f"{list(self.context_offsets)} (months relative to past_date): pass context={{offset: "
                             "uint8 image}} (leave out the months you do not have)")
        if not self.needs_context and context:
            raise ValueError(f"this {self.family} model was trained without context frames: pass context=None")
        if self.uses_mask and future_mask is None:
            raise ValueError(f"this {self.family} model was trained with the future building mask as guidance: pass "
                             "future_mask (0/1 footprints of the future date)")
        if self.uses_past_mask and past_mask is None:
            raise ValueError(f"this {self.family} model also takes the past building mask as guidance: pass past_mask "
                             "(0/1 footprints of the past date)")
        if not self.uses_mask and future_mask is not None:
            raise ValueError(f"this {self.family} model was trained without building masks: it cannot use future_mask "
                             "(pass None)")
        batch = make_batch(past, past_date, future_date, future_mask, past_mask, aoi=aoi, context=context,
                           context_offsets=self.context_offsets if self.needs_context else None)
        size = self.tile_size_px
        if size and tuple(batch["past"].shape[-2:]) != (size, size):
            raise ValueError(f"the model was trained on {size} x {size} px tiles; got {tuple(batch['past'].shape[-2:])}. "
                             f"Cut the image into {size} px tiles first")
        out = to_uint8(self.generate(batch, seed))
        return out[0] if np.asarray(past).ndim == 3 else out

    def generate(self, batch: dict[str, Any], seed: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CGANPredictor(Predictor):
    """pix2pix or attention-U-Net generator of a run folder (``best/`` by default).

    ``compile``: ``auto`` (default) prepares the generator with
    :func:`stsynth_lib.models.inference.prepare_for_inference` as :func:`stsynth_lib.training.resolve_device`
    decides (on a CPU: batch norm folded, phase transposed convolutions, ``torch.compile`` from the
    batch ``AUTO_COMPILE_AFTER_CALLS + 1`` on: a few sample images never wait for a compiler); ``False`` runs the
    prepared generator eagerly. Both agree with the trained generator (``self.G``) within ``INFERENCE_ATOL``. A
    compiled generator sees every batch padded to the largest batch size it has seen, so tiles of a scene (a last,
    smaller batch) reuse one compiled graph.

    ``precision``: ``"no"`` (default: fp32, the predictions of the chapters' split predictor), ``"bf16"``
    (autocast; about 2x faster again on a CPU with native bf16, ``make bench``; outputs differ from fp32 by about
    1e-3 in [-1, 1], at most 2 grey levels on a scene, ``bench_scene``: not the chapters' numbers, so opt-in) or
    ``"auto"`` (what :func:`stsynth_lib.training.resolve_device` picks for training: bf16 on a GPU or a CPU with native
    bf16, fp32 elsewhere).
    """

    def __init__(self, run_dir: str | Path, which: str = "best", device: str = "cpu", compile: bool | str = "auto",
                 precision: str = "no"):
        from stsynth_lib.cgan.model_io import load_generator
        from stsynth_lib.models.inference import AUTO_COMPILE_AFTER_CALLS, prepare_for_inference
        from stsynth_lib.training import resolve_device

        self.G, self.guidance = load_generator(run_dir, which, map_location="cpu")
        self.G.to(device)
        self.device = device
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS} (no = fp32), got {precision!r}")
        self.setup = resolve_device("cuda" if str(device).startswith("cuda") else "cpu", precision, "auto",
                                    compile=compile, for_inference=True)
        # auto: the first batches run eagerly (a few sample images never pay for compiling); True: at once
        self.fast = prepare_for_inference(self.G, compile=self.setup.compile, channels_last=self.setup.channels_last,
                                          compile_after_calls=AUTO_COMPILE_AFTER_CALLS if compile == "auto" else 0)
        self._batch_bucket = 0
        spec = yaml.safe_load((Path(run_dir) / "model.yaml").read_text())
        self.family = str(spec["name"])  # pix2pix | attention_unet
        self.uses_mask = bool(self.guidance.use_mask)
        self.uses_past_mask = bool(self.guidance.use_past_mask)
        self.context_offsets = self.guidance.context_offsets_months
        self.trained_tile_size_px, self.n_bands = int(spec["tile_size_px"]), int(spec["out_channels"])
        # fully convolutional: any multiple of the U-Net's downsampling factor; but a tile_reweight start pools its
        # weights over the whole input, and centre_inputs / linear_centre: tile_mean take the mean colour of the whole
        # input, so such a model sees tiles of the size it was trained on
        pools = (spec.get("temporal_fusion") == "tile_reweight" or spec.get("centre_inputs")
                 or self.guidance.linear_centre == "tile_mean")
        self.tile_size_px = self.trained_tile_size_px if pools else None

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], seed: int) -> torch.Tensor:
        from stsynth_lib.conditioning import build_condition
        from stsynth_lib.training import to_device

        b = to_device(batch, self.device)
        cond = build_condition(b, self.guidance)
        n = cond.shape[0]
        if self.setup.compile:  # one static shape per tile size: pad a smaller batch with copies of its last tile
            self._batch_bucket = max(self._batch_bucket, n)
            if n < self._batch_bucket:
                cond = torch.cat([cond, cond[-1:].expand(self._batch_bucket - n, *cond.shape[1:])])
        if self.setup.channels_last:
            cond = cond.contiguous(memory_format=torch.channels_last)
        bf16 = self.setup.mixed_precision == "bf16"
        with torch.autocast(cond.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            return self.fast(cond)[:n].float().contiguous().cpu()


class ControlNetPredictor(Predictor):
    """A trained ControlNet with its backbone; sampling as in generation (run options, seeded noise)."""

    family = "ControlNet"

    def __init__(self, run_dir: str | Path, device: str = "cpu", scheduler: str | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 strength: float | None = None, controlnet_conditioning_scale: float | None = None):
        from stsynth_lib.controlnet.generate import chosen_generation, load_trained, make_scheduler

        self.backbone, self.controlnet, self.params = load_trained(run_dir, device)
        self.device = next(self.controlnet.parameters()).device
        # None: what chapter 5 chose on validation and drew with (generation.yaml), else UniPC, 20 steps, no
        # guidance, pure noise (strength 1)
        chosen = chosen_generation(run_dir)
        pick = lambda value, key, default: value if value is not None else chosen.get(key, default)  # noqa: E731
        self.scheduler_name = pick(scheduler, "scheduler", "unipc")
        self.scheduler = make_scheduler(self.scheduler_name, self.backbone.noise_scheduler.config)
        self.steps = int(pick(num_inference_steps, "num_inference_steps", 20))
        self.guidance_scale = float(pick(guidance_scale, "guidance_scale", 1.0))
        self.strength = float(pick(strength, "img2img_strength", 1.0))
        self.conditioning_scale = float(pick(controlnet_conditioning_scale, "controlnet_conditioning_scale", 1.0))
        self.uses_mask = bool(self.params["use_mask"])
        self.tile_size_px = self.trained_tile_size_px = int(self.params["tile_size_px"])

    def generate(self, batch: dict[str, Any], seed: int) -> torch.Tensor:
        from stsynth_lib.controlnet.conditioning import batch_conditioning, batch_prompts, resize_batch, resize_spatial
        from stsynth_lib.controlnet.generate import sample_images

        p = self.params
        b = resize_batch(batch, p["resolution_px"])
        cond = batch_conditioning(b, p["use_gap_plane"], p["gap_scale_months"], p["use_mask"]).to(self.device)
        prompts = batch_prompts(batch, p["prompt_template"], p["empty_prompt"])
        seeds = [seed + i for i in range(len(prompts))]
        imgs = sample_images(self.backbone, self.controlnet, cond, prompts, self.scheduler, self.steps,
                             self.guidance_scale, seeds, self.conditioning_scale,
                             init_image=b["past"].to(self.device), strength=self.strength)
        return resize_spatial(imgs, batch["past"].shape[-1])


def load_predictor(run_dir: str | Path, which: str = "best", device: str = "cpu", compile: bool | str = "auto",
                   precision: str = "no", **kwargs: Any) -> Predictor:
    """The predictor of any trained run folder: a cGAN (``model.yaml``: pix2pix, attention_unet; ``which`` picks
    ``best``, ``latest`` or a checkpoint; ``compile``, ``precision``: see :class:`CGANPredictor`) or a ControlNet
    (``controlnet/``; ``kwargs`` go to sampling: ``scheduler``, ``num_inference_steps``, ``guidance_scale``,
    ``strength``)."""
    run = Path(run_dir)
    if (run / "model.yaml").is_file():
        return CGANPredictor(run, which, device, compile=compile, precision=precision)
    if (run / "controlnet" / "config.json").is_file():
        return ControlNetPredictor(run, device, **kwargs)
    raise FileNotFoundError(f"{run} is not a trained run folder: it has neither model.yaml (cGAN) nor "
                            "controlnet/config.json (ControlNet). Train one first (notebooks 03-05).")


__all__: Sequence[str] = ("INFERENCE_PRECISIONS", "CGANPredictor", "ControlNetPredictor", "Predictor", "context_fields",
                          "inputs_from_sample", "load_predictor", "make_batch", "parse_month", "predictor_sample")
