"""The cGANs' predictor (pix2pix, attention U-Net) and the two ways the cGAN code runs it over a split: the chapters'
test predictions scored against persistence (:func:`predict_and_score`) and the trainer's validation
(:func:`score_generator`), both through the one split loop :func:`stsynth_lib.predict.split.predict_split`.

Two modes, one class: a predictor loaded for applications (:func:`stsynth_lib.predict.load_predictor`, the CLI)
prepares the generator for speed (:func:`stsynth_lib.models.inference.prepare_for_inference`: batch norm folded,
phase transposed convolutions, optional ``torch.compile``; equal to the trained generator within
``INFERENCE_ATOL``), while ``prepare=False`` (and :meth:`CGANPredictor.from_generator`) runs the trained generator
as it is, eagerly, in its own dtype: the chapters' numbers and the trainer's validation, bit for bit.

L1 in the scores is in the [-1, 1] units of the training loss (see :mod:`stsynth_lib.evaluate.generator`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn

from stsynth_lib.conditioning import GuidanceConfig, build_condition
from stsynth_lib.evaluate.generator import PairScores, dataset_for_guidance, evaluate_persistence
from stsynth_lib.predict.base import INFERENCE_PRECISIONS, Predictor
from stsynth_lib.predict.split import predict_split
from stsynth_lib.training import to_device


class CGANPredictor(Predictor):
    """pix2pix or attention-U-Net generator of a run folder (``best/`` by default).

    ``prepare=False`` runs the trained generator (``self.G``) as it is: eager, fp32 (its own dtype), no folding, no
    autocast: what the chapters' split predictions and the trainer's validation give, bit for bit
    (``compile`` and ``precision`` then keep their defaults). With ``prepare=True`` (default):

    ``compile``: ``auto`` (default) prepares the generator with
    :func:`stsynth_lib.models.inference.prepare_for_inference` as :func:`stsynth_lib.training.resolve_device`
    decides (on a CPU: batch norm folded, phase transposed convolutions, ``torch.compile`` from the
    batch ``AUTO_COMPILE_AFTER_CALLS + 1`` on: a few sample images never wait for a compiler); ``False`` runs the
    prepared generator eagerly. Both agree with the trained generator within ``INFERENCE_ATOL``. A
    compiled generator sees every batch padded to the largest batch size it has seen, so tiles of a scene (a last,
    smaller batch) reuse one compiled graph.

    ``precision``: ``"no"`` (default: fp32, the chapters' numbers up to float rounding), ``"bf16"``
    (autocast; about 2x faster again on a CPU with native bf16, ``make bench``; outputs differ from fp32 by about
    1e-3 in [-1, 1], at most 2 grey levels on a scene, ``bench_scene``: not the chapters' numbers, so opt-in) or
    ``"auto"`` (what :func:`stsynth_lib.training.resolve_device` picks for training: bf16 on a GPU or a CPU with native
    bf16, fp32 elsewhere).
    """

    def __init__(self, run_dir: str | Path, which: str = "best", device: str = "cpu", compile: bool | str = "auto",
                 precision: str = "no", prepare: bool = True):
        from stsynth_lib.cgan.model_io import load_generator

        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS} (no = fp32), got {precision!r}")
        if not prepare and (precision != "no" or compile != "auto"):
            raise ValueError("prepare=False runs the trained generator as it is (eager, fp32): leave compile and "
                             "precision at their defaults")
        G, guidance = load_generator(run_dir, which, map_location="cpu")
        spec = yaml.safe_load((Path(run_dir) / "model.yaml").read_text())
        self._attach(G, guidance, device, str(spec["name"]))  # pix2pix | attention_unet
        self.trained_tile_size_px, self.n_bands = int(spec["tile_size_px"]), int(spec["out_channels"])
        # fully convolutional: any multiple of the U-Net's downsampling factor; but a tile_reweight start pools its
        # weights over the whole input, and centre_inputs / linear_centre: tile_mean take the mean colour of the whole
        # input, so such a model sees tiles of the size it was trained on
        pools = (spec.get("temporal_fusion") == "tile_reweight" or spec.get("centre_inputs")
                 or self.guidance.linear_centre == "tile_mean")
        self.tile_size_px = self.trained_tile_size_px if pools else None
        if prepare:
            self._prepare(compile, precision)

    @classmethod
    def from_generator(cls, G: nn.Module, guidance: GuidanceConfig, device: str | torch.device = "cpu",
                       family: str = "cGAN") -> CGANPredictor:
        """A generator in memory (a trainer's, a test's) with the :class:`GuidanceConfig` it was trained with, run
        as it is (``prepare=False``). ``G`` is moved to ``device``; its train/eval mode is left as it was."""
        self = cls.__new__(cls)
        self._attach(G, guidance, device, family)
        return self

    def _attach(self, G: nn.Module, guidance: GuidanceConfig, device, family: str) -> None:
        self.G, self.guidance, self.device, self.family = G.to(device), guidance, device, family
        self.setup = self.fast = None  # None: the trained generator as it is (exact)
        self._batch_bucket = 0
        self.uses_mask = bool(guidance.use_mask)
        self.uses_past_mask = bool(guidance.use_past_mask)
        self.context_offsets = guidance.context_offsets_months

    def _prepare(self, compile: bool | str, precision: str) -> None:
        from stsynth_lib.models.inference import AUTO_COMPILE_AFTER_CALLS, prepare_for_inference
        from stsynth_lib.training import resolve_device

        self.setup = resolve_device("cuda" if str(self.device).startswith("cuda") else "cpu", precision, "auto",
                                    compile=compile, for_inference=True)
        # auto: the first batches run eagerly (a few sample images never pay for compiling); True: at once
        self.fast = prepare_for_inference(self.G, compile=self.setup.compile, channels_last=self.setup.channels_last,
                                          compile_after_calls=AUTO_COMPILE_AFTER_CALLS if compile == "auto" else 0)

    def prepare_dataset(self, dataset):
        """The pairs of ``dataset`` with the context frames the generator reads (:func:`dataset_for_guidance`)."""
        return dataset_for_guidance(dataset, self.guidance)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], seed: Any = 0) -> torch.Tensor:
        """The generator's images of a collated batch (``seed`` is ignored: a cGAN draws no noise)."""
        b = to_device(batch, self.device)
        cond = build_condition(b, self.guidance)
        if self.fast is None:  # the trained generator as it is: the chapters' and the validation's numbers
            was_training = self.G.training
            self.G.eval()
            try:
                return self.G(cond.to(next(self.G.parameters()).dtype)).float().cpu()
            finally:
                self.G.train(was_training)
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


def score_generator(G: nn.Module, dataset, guidance: GuidanceConfig, batch_size: int = 16,
                    device: str | torch.device = "cpu", progress: bool = False) -> pd.DataFrame:
    """Per-pair masked L1 / PSNR / SSIM of a generator in memory on ``dataset`` (the trainer's validation), scored on
    the uint8-quantised images like the saved predictions; nothing is written (:class:`PairScores` columns)."""
    scores = PairScores()
    predict_split(CGANPredictor.from_generator(G, guidance, device), dataset, None, batch_size=batch_size,
                  progress=progress, on_batch=scores, desc="evaluate")
    return scores.frame()


def predict_and_score(model: str | Path | nn.Module, dataset, out_dir: str | Path,
                      guidance: GuidanceConfig | None = None, which: str = "best", batch_size: int = 16,
                      device: str = "cpu", progress: bool = True,
                      metrics_csv: str | Path | None = None) -> pd.DataFrame:
    """Generate every pair of ``dataset``, save GeoTIFF + PNG predictions into ``out_dir`` and score them.

    ``model`` is a run folder (``which`` weights, run as trained: ``CGANPredictor(..., prepare=False)``) or a
    generator (then pass its ``guidance``). The folder is cleared first so runs never mix. Returns per-pair metrics
    of the model and of persistence (``persistence_*`` columns; on a dataset split by blocks also ``cluster``, what
    :func:`stsynth_lib.evaluate.generator.area_comparison` resamples); written to ``metrics_csv`` if given.
    """
    from stsynth_lib.evaluate.scoring import resampling_clusters, resampling_unit

    if isinstance(model, (str, Path)):
        predictor = CGANPredictor(model, which, device, prepare=False)
    elif guidance is None:
        raise ValueError("predict_and_score(model=<nn.Module>) needs the GuidanceConfig the model was trained with")
    else:
        predictor = CGANPredictor.from_generator(model, guidance, device)
    scores = PairScores()
    predict_split(predictor, dataset, out_dir, batch_size=batch_size, progress=progress, on_batch=scores,
                  desc="predict")
    df = scores.frame()
    pers = evaluate_persistence(dataset, batch_size)
    df = df.merge(pers[["pair_id", "l1", "psnr", "ssim"]].add_prefix("persistence_").rename(
        columns={"persistence_pair_id": "pair_id"}), on="pair_id")
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None and resampling_unit(pairs) == "block":  # what area_comparison's interval resamples
        df["cluster"] = df["pair_id"].map(dict(zip(pairs["pair_id"], resampling_clusters(pairs))))
    if metrics_csv is not None:
        Path(metrics_csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(metrics_csv, index=False)
    return df


__all__ = ["CGANPredictor", "predict_and_score", "score_generator"]
