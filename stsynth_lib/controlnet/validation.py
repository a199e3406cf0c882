"""What the ControlNet trainer measures at each validation: losses with and without the control and with another
pair's conditioning (``control_gain``, ``cond_gain``) on fixed noise and timesteps, and a figure of samples."""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from stsynth_lib.controlnet.conditioning import batch_conditioning, batch_prompts, resize_batch, resize_spatial
from stsynth_lib.controlnet.generate import encode_prompts, make_scheduler, sample_images
from stsynth_lib.controlnet.losses import diffusion_loss
from stsynth_lib.figure_check import BOOK_WIDTH_IN, checked
from stsynth_lib.training import collate


def validation_figure(batch: Mapping[str, Any], generated: torch.Tensor, title: str):
    """Rows of past | future mask (on labelled data) | generated | truth (a matplotlib Figure, not shown)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from stsynth_lib.data.dataset import to_uint8

    n = generated.shape[0]
    with_mask = bool(torch.as_tensor(batch["has_mask"][:n]).any())  # no all-black "no labels" column
    fig = Figure(figsize=(min(2 * (3 + with_mask), BOOK_WIDTH_IN), 2.1 * n + 0.6))  # shown 1:1 (show_validation)
    FigureCanvasAgg(fig)  # a renderer for the text-size check (no pyplot: training threads draw these)
    axes = fig.subplots(n, 3 + with_mask, squeeze=False)
    for i in range(n):
        panels = [
            (to_uint8(batch["past"][i][:3]).transpose(1, 2, 0), "past"),
            (batch["future_mask"][i][0].cpu().numpy(), "future mask" if bool(batch["has_mask"][i]) else "no labels"),
            (to_uint8(generated[i][:3]).transpose(1, 2, 0), "generated"),
            (to_uint8(batch["future"][i][:3]).transpose(1, 2, 0), "truth"),
        ]
        if not with_mask:
            del panels[1]
        for ax, (img, t) in zip(axes[i], panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            ax.set_title(f"{t}" if i == 0 else "", fontsize=9)
            ax.axis("off")
    fig.suptitle(textwrap.fill(title, 60), fontsize=10)
    fig.tight_layout()
    return checked(fig)




class ControlNetValidator:
    """Fixed validation pairs, spread over the (seeded, shuffled) validation split (consecutive pairs often share
    their past tile, and ``cond_gain`` compares each pair's conditioning with another pair's).

    Calling it with a ControlNet returns ``val_loss``, ``val_loss_nocontrol``, ``val_loss_shuffled_cond``,
    ``control_gain`` and ``cond_gain`` and writes ``samples/step-<step>.png``. It never perturbs the training RNG
    streams (resume would otherwise diverge).
    """

    def __init__(self, cfg, backbone, val_ds, res: int, tile_px: int, use_mask: bool, weight_dtype, device,
                 on_cuda: bool, run_dir: Path, is_main: bool, residual_scale: float | None = None):
        self.cfg, self.backbone, self.res, self.tile_px = cfg, backbone, res, tile_px
        self.residual_scale = residual_scale  # None: the run learns the image; else the change from the past
        self.use_mask, self.weight_dtype, self.device, self.on_cuda = use_mask, weight_dtype, device, on_cuda
        self.run_dir, self.is_main = Path(run_dir), is_main
        n_loss = max(1, min(max(cfg.num_validation_loss_pairs, cfg.num_validation_images), len(val_ds)))
        idx = np.unique(np.linspace(0, len(val_ds) - 1, n_loss).round().astype(int)).tolist()
        self.n_loss, self.loss_idx = len(idx), idx
        self.n_val = min(cfg.num_validation_images, self.n_loss)
        self.loss_batch = resize_batch(collate([val_ds[i] for i in idx]), res)
        self.val_batch = collate([val_ds[i] for i in idx[: self.n_val]])
        self.timesteps = torch.linspace(50, backbone.noise_scheduler.config.num_train_timesteps - 50, 5).long()
        self.note = " -- tiny-random backbone: images are not meaningful" if backbone.kind == "tiny-random" else ""

    def __call__(self, step: int, controlnet) -> dict[str, float]:
        devices = [torch.cuda.current_device()] if self.on_cuda else []
        with torch.random.fork_rng(devices=devices):
            controlnet.eval()
            try:
                with torch.no_grad():
                    cond = batch_conditioning(self.loss_batch, self.cfg.use_gap_plane, self.cfg.gap_scale_months,
                                              self.use_mask, self.cfg.context_offsets_months)
                    prompts = batch_prompts(self.loss_batch, self.cfg.prompt_template, self.cfg.empty_prompt)
                    out = self.losses(controlnet, cond, prompts)
                    gen = self.images(controlnet, cond, prompts)
                if self.is_main:
                    self.save_figure(step, gen, out)
            finally:
                controlnet.train()
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        return out

    def losses(self, cn, cond: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """Mean losses with the control, without it, and with another pair's conditioning (rolled by one; zeros
        for a single pair), on the same noise, timesteps and VAE posterior sample."""
        cfg, bb, dev, wd = self.cfg, self.backbone, self.device, self.weight_dtype
        cond_other = cond.roll(1, dims=0) if self.n_loss > 1 else torch.zeros_like(cond)
        sums = {"val_loss": 0.0, "val_loss_nocontrol": 0.0, "val_loss_shuffled_cond": 0.0}
        self.slice_losses = {k: [] for k in sums}  # per (timestep, slice) mean loss; one pair per slice at bs 1
        g = torch.Generator().manual_seed(cfg.seed + 999)
        bs, f, n_terms = cfg.validation_batch_size, bb.vae_scale_factor, 0
        for t in self.timesteps:
            for i in range(0, self.n_loss, bs):
                sl = slice(i, i + bs)
                px = self.loss_batch["future"][sl].to(dev)
                emb = encode_prompts(bb, prompts[sl], dev, wd)
                noise = torch.randn((px.shape[0], bb.unet.config.in_channels, self.res // f, self.res // f),
                                    generator=g).to(dev)
                tt = t.repeat(px.shape[0]).to(dev)
                valid = self.loss_batch["valid"][sl].to(dev)
                residual = dict(start=self.loss_batch["past"][sl].to(dev), residual_scale=self.residual_scale) \
                    if self.residual_scale is not None else {}
                for key, c, use_control in (("val_loss", cond, True), ("val_loss_nocontrol", cond, False),
                                            ("val_loss_shuffled_cond", cond_other, True)):
                    torch.manual_seed(cfg.seed + 7)  # same VAE posterior sample for every loss
                    loss = diffusion_loss(bb, cn, px, c[sl].to(dev), emb, valid, wd, noise, tt, use_control=use_control,
                                          **residual)
                    sums[key] += float(loss) * px.shape[0]
                    self.slice_losses[key].append(float(loss))
                n_terms += px.shape[0]
        out = {k: v / max(n_terms, 1) for k, v in sums.items()}
        out["control_gain"] = 1.0 - out["val_loss"] / max(out["val_loss_nocontrol"], 1e-12)
        out["cond_gain"] = 1.0 - out["val_loss"] / max(out["val_loss_shuffled_cond"], 1e-12)
        return out

    def images(self, cn, cond: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Samples for the first ``num_validation_images`` pairs (seeded), at the tile size."""
        cfg, bs = self.cfg, self.cfg.validation_batch_size
        sched = make_scheduler(cfg.validation_scheduler, self.backbone.noise_scheduler.config)
        imgs = []
        for i in range(0, self.n_val, bs):
            sl = slice(i, min(i + bs, self.n_val))  # the drawn pairs only, not the next loss pairs
            imgs.append(sample_images(self.backbone, cn, cond[sl].to(self.device), prompts[sl], sched,
                                      cfg.validation_inference_steps, cfg.validation_guidance_scale,
                                      seeds=[cfg.seed + i + j for j in range(len(prompts[sl]))],
                                      weight_dtype=self.weight_dtype, residual_scale=self.residual_scale,
                                      init_image=self.loss_batch["past"][sl].to(self.device)))
        return resize_spatial(torch.cat(imgs), self.tile_px)

    def save_figure(self, step: int, gen: torch.Tensor, out: Mapping[str, Any]) -> Path:
        fig = validation_figure(self.val_batch, gen, f"ControlNet step {step}, control_gain {out['control_gain']:+.3f}, "
                                f"cond_gain {out['cond_gain']:+.3f}{self.note}")
        path = self.run_dir / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)  # 9 pt titles stay 9 pt when the book shows the grid (show_validation: 1:1)
        tmp.replace(path)
        return path


def condition_gain_estimate(run_dir: str | Path, n_pairs: int = 256, n_boot: int = 1000, seed: int = 0,
                            device: str = "auto") -> dict[str, Any]:
    """``cond_gain`` and ``control_gain`` of a trained ControlNet measured as in training's validation (fixed noise,
    the same 5 timesteps, another pair's conditioning rolled by one) but on ``n_pairs`` validation pairs instead of
    the few the training log uses (16 by default, a noisy estimate), with 95 % intervals that resample whole areas,
    or whole blocks on a dataset split by blocks (``split_by: block``, as chapter 6's intervals:
    :func:`~stsynth_lib.evaluate.scoring.resampling_clusters`); one unit gives no interval (``None``).

    Returns ``{"n_pairs", "n_areas", "n_units", "unit", "cond_gain", "cond_gain_ci", "control_gain", "control_gain_ci",
    "val_loss", ...}``. Losses are computed one pair at a time (so each pair has its own losses)."""
    from dataclasses import fields, replace

    from stsynth_lib.controlnet.config import ControlNetTrainConfig
    from stsynth_lib.controlnet.generate import load_trained
    from stsynth_lib.controlnet.residual import run_residual_scale
    from stsynth_lib.data.dataset import PairedTileDataset

    backbone, controlnet, params = load_trained(run_dir, device)
    cfg = ControlNetTrainConfig(**{f.name: params[f.name] for f in fields(ControlNetTrainConfig) if f.name in params})
    cfg = replace(cfg, num_validation_loss_pairs=int(n_pairs), num_validation_images=1, validation_batch_size=1)
    ds = PairedTileDataset(params["dataset_dir"], "val", max_pairs=int(n_pairs), subsample_seed=cfg.seed,
                           context_offsets_months=cfg.context_offsets_months)
    if len(ds) < 2:
        raise ValueError(f"{params['dataset_dir']}: the val split has {len(ds)} pair(s); cond_gain needs 2 or more")
    dev = next(controlnet.parameters()).device
    wd = next(controlnet.parameters()).dtype
    v = ControlNetValidator(cfg, backbone, ds, int(params["resolution_px"]), int(params["tile_size_px"]),
                            bool(params["use_mask"]), wd, dev, dev.type == "cuda", Path(run_dir), is_main=False,
                            residual_scale=run_residual_scale(run_dir, params))
    with torch.no_grad():
        cond = batch_conditioning(v.loss_batch, cfg.use_gap_plane, cfg.gap_scale_months, bool(params["use_mask"]),
                                  cfg.context_offsets_months)
        prompts = batch_prompts(v.loss_batch, cfg.prompt_template, cfg.empty_prompt)
        means = v.losses(controlnet.eval(), cond, prompts)
    n = v.n_loss
    per = {k: np.asarray(x, float).reshape(len(v.timesteps), n).mean(0) for k, x in v.slice_losses.items()}
    from stsynth_lib.evaluate.scoring import resampling_clusters, resampling_unit

    chosen = ds.pairs.iloc[v.loss_idx]
    areas, unit = resampling_clusters(chosen), resampling_unit(chosen)
    units = np.unique(areas)
    rng = np.random.default_rng(seed)

    def gain(idx, other):
        return 1.0 - per["val_loss"][idx].mean() / max(per[other][idx].mean(), 1e-12)

    boot = {"cond_gain": [], "control_gain": []}
    members = [np.flatnonzero(areas == u) for u in units]
    for _ in range(int(n_boot) if len(units) > 1 else 0):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(units), len(units))])
        boot["cond_gain"].append(gain(idx, "val_loss_shuffled_cond"))
        boot["control_gain"].append(gain(idx, "val_loss_nocontrol"))
    out: dict[str, Any] = {"n_pairs": int(n), "n_areas": int(chosen["aoi"].nunique()), "n_units": int(len(units)),
                           "unit": unit, **{k: float(x) for k, x in means.items()}}
    for k, b in boot.items():
        out[f"{k}_ci"] = [float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))] if b else None
    return out
