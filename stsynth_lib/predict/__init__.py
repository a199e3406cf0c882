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

A split of a tile store, any model (the loop the chapters' test predictions, the cGAN trainer's validation and the
ControlNet's generation share; :mod:`stsynth_lib.predict.split`)::

    >>> from stsynth_lib.predict.split import predict_split
    >>> predict_split(predictor, PairedTileDataset(dataset_dir, "test"), "predictions/test", seed=0)

Whole SpaceNet 7 trees, any image size (the command line, :mod:`stsynth_lib.predict.cli`; tiles stitched with blended
overlaps, :mod:`stsynth_lib.predict.scene`; pairs, masks and outputs, :mod:`stsynth_lib.predict.tree`; the prediction
files that evaluation reads, :mod:`stsynth_lib.predict.files`)::

    python -m stsynth_lib.predict --run runs/sn7/pix2pix --data /data/SN7_buildings_train --out predictions/sn7
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stsynth_lib.data.dataset import to_uint8
from stsynth_lib.predict.base import (  # noqa: F401  (the public API, re-exported)
    INFERENCE_PRECISIONS,
    Predictor,
    context_fields,
    make_batch,
    parse_month,
)

def __getattr__(name: str) -> Any:
    """The families' predictors live next to their models (trainer layer) and load on first use, so importing
    ``stsynth_lib.predict.files`` / ``.base`` / ``.split`` (which runs this file first) loads no trainer code."""
    if name == "CGANPredictor":
        from stsynth_lib.cgan.predictor import CGANPredictor

        return CGANPredictor
    if name == "ControlNetPredictor":
        from stsynth_lib.controlnet.generate import ControlNetPredictor

        return ControlNetPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    return predictor.prepare_dataset(dataset)[int(index)]


def load_predictor(run_dir: str | Path, which: str = "best", device: str = "cpu", compile: bool | str = "auto",
                   precision: str = "no", **kwargs: Any) -> Predictor:
    """The predictor of any trained run folder: a cGAN (``model.yaml``: pix2pix, attention_unet; ``which`` picks
    ``best``, ``latest`` or a checkpoint; ``compile``, ``precision``: see :class:`CGANPredictor`) or a ControlNet
    (``controlnet/``; ``kwargs`` go to sampling: ``scheduler``, ``num_inference_steps``, ``guidance_scale``,
    ``strength``)."""
    run = Path(run_dir)
    if (run / "model.yaml").is_file():
        from stsynth_lib.cgan.predictor import CGANPredictor

        return CGANPredictor(run, which, device, compile=compile, precision=precision)
    if (run / "controlnet" / "config.json").is_file():
        from stsynth_lib.controlnet.generate import ControlNetPredictor

        return ControlNetPredictor(run, device, **kwargs)
    raise FileNotFoundError(f"{run} is not a trained run folder: it has neither model.yaml (cGAN) nor "
                            "controlnet/config.json (ControlNet). Train one first (notebooks 03-05).")


__all__: Sequence[str] = ("INFERENCE_PRECISIONS", "CGANPredictor", "ControlNetPredictor", "Predictor", "context_fields",
                          "inputs_from_sample", "load_predictor", "make_batch", "parse_month", "predictor_sample")
