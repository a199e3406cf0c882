"""Score a folder of whole-image predictions against a SpaceNet 7 tree (``python -m stsynth_lib.evaluate``).

The folder is what ``python -m stsynth_lib.predict --out <folder>`` writes: one uint8 GeoTIFF per pair with the
input image's size, CRS and transform, and ``<folder>/index.csv`` with the columns :data:`INDEX_COLUMNS`
(dates ``YYYY-MM``; ``prediction`` relative to the folder). For every listed pair:

* the past and the true future image are found in the data tree by AOI and month (:func:`scan_sn7`; the absolute
  paths of the index are only a fallback, since the tree may have moved) and read as the dataset builder reads them
  (:func:`stsynth_lib.data.build.read_image`: validity from alpha / UDM / nodata, footprints rasterised from the
  labels when the tree has them, ``has_mask`` False otherwise);
* truth, past, masks, validity and prediction are cut into ``tile_size_px`` tiles over the whole image
  (:func:`stsynth_lib.data.build.tile_grid`: the last row/column of tiles shifts inward, so every pixel is scored);
* persistence (the past image) and the model are scored with :func:`~stsynth_lib.evaluate.scoring.score_split`,
  the function chapter 6 uses on the tile store: the same metrics, summaries and bootstrap intervals.

The paired comparison resamples ``block_size_px`` blocks (:func:`stsynth_lib.data.blocks.block_of`; a tile that
crosses a block border goes to the block of its centre) when the folder covers ONE area, and whole areas otherwise.
Bad input raises :class:`~stsynth_lib.predict.files.PredictionFileError` (the prediction folder),
:class:`~stsynth_lib.data.errors.SN7DataError` (the data tree) or :class:`EvalInputError` (an option), each naming
the file and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsynth_lib.book.report_format import plural
from stsynth_lib.data.errors import SN7DataError
from stsynth_lib.evaluate.data import PERSISTENCE, UPPER_BOUND, EvalResult, SplitData
from stsynth_lib.evaluate.folder_index import INDEX_COLUMNS, read_index  # noqa: F401
from stsynth_lib.predict.files import PredictionFileError


class EvalInputError(ValueError):
    """An option of the folder evaluation that cannot be used (the message names it and the fix)."""


@dataclass
class _Tiles:
    """Tiles cut so far, one list entry per image pair."""

    rows: list[pd.DataFrame] = field(default_factory=list)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, rows: pd.DataFrame, **arrays: np.ndarray) -> None:
        self.rows.append(rows)
        for k, v in arrays.items():
            self.arrays.setdefault(k, []).append(v)

    def stack(self, key: str) -> np.ndarray:
        return np.concatenate(self.arrays[key])


# --------------------------------------------------------------------------- the data tree


def locate_images(
    index: pd.DataFrame, data_root: str | Path, index_path: Path, notes: list[str], progress: bool = True
) -> tuple[list[dict], list[dict]]:
    """(past rows, future rows) of :func:`scan_sn7` for every index row, found by AOI and month in ``data_root``;
    a pair not there falls back to the index's absolute path when that file exists (its AOI folder is scanned)."""
    from stsynth_lib.data.sn7 import scan_sn7

    meta = scan_sn7(data_root, cloud_stats=False, progress=progress)
    by_month = {(r["aoi"], int(r["year"]), int(r["month"])): r for r in meta.to_dict("records")}
    by_path: dict[str, dict] = {}
    scanned: set[Path] = set()
    fallbacks = 0
    out: tuple[list[dict], list[dict]] = ([], [])
    for row in index.to_dict("records"):
        for side, found in (("past", out[0]), ("future", out[1])):
            key = (row["aoi"], int(row[f"{side}_year"]), int(row[f"{side}_month"]))
            hit = by_month.get(key)
            if hit is None:
                hit = _by_path(row[f"{side}_image"], by_path, scanned)
                fallbacks += hit is not None
            if hit is None:
                raise SN7DataError(
                    f"{index_path}, line {row['line']}: the data tree {data_root} has no image of AOI {row['aoi']} "
                    f"for {row[f'{side}_date']} ({side} image), and {row[f'{side}_image'] or 'the listed path'} does "
                    "not exist. Pass --data the SpaceNet 7 tree the predictions were made from."
                )
            found.append(hit)
    if fallbacks:
        notes.append(
            f"{fallbacks} image(s) were not in {data_root} by AOI and month and were read from the absolute "
            f"paths of {index_path}."
        )
    return out


def _by_path(path: str, by_path: dict[str, dict], scanned: set[Path]) -> dict | None:
    """The scan row of the image at ``path`` (its AOI parent folder scanned once), or None when it is not there."""
    from stsynth_lib.data.sn7 import scan_sn7

    p = Path(str(path).strip()) if str(path).strip() else None
    if p is None or not p.is_file() or len(p.parents) < 3:
        return None
    root = p.resolve().parents[2]  # <root>/<AOI>/images/<file>.tif
    if root not in scanned:
        scanned.add(root)
        try:
            found = scan_sn7(root, cloud_stats=False, progress=False)
        except SN7DataError:
            return None
        by_path.update({str(Path(r["image_path"]).resolve()): r for r in found.to_dict("records")})
    return by_path.get(str(p.resolve()))


def _read_prediction(path: Path, index: Path, line: int) -> tuple[np.ndarray, Any, str]:
    """(uint8 image, transform, CRS string) of one listed prediction; missing or unreadable files are named."""
    import warnings

    import rasterio

    from stsynth_lib.predict.files import read_prediction_tif

    if not path.is_file():
        raise PredictionFileError(
            f"{index}, line {line}: prediction {path} does not exist (the prediction column is "
            f"relative to {index.parent}). Re-run the predictions or fix index.csv."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                transform, crs = src.transform, (src.crs.to_string() if src.crs else "")
    except rasterio.errors.RasterioError as exc:
        raise PredictionFileError(
            f"Cannot read prediction {path} ({index}, line {line}): {exc}. Re-run the predictions."
        ) from exc
    return read_prediction_tif(path), transform, crs


def _check_prediction(pred, ptf, pcrs, past, future, path: Path, bands: Sequence[int]) -> None:
    """The prediction must lie on its input (past) image's grid: bands, size, CRS and transform."""
    (_, _, _, tf, crs), (fimg, *_) = past, future
    h, w = past[0].shape[1:]
    fix = "it must have the input image's size, CRS and transform (re-run the predictions on this data tree)"
    if pred.shape[0] != len(bands):
        raise PredictionFileError(
            f"Prediction {path} has {pred.shape[0]} bands; the images are scored on bands "
            f"{list(bands)} of the data tree: pass --bands, or re-run the predictions."
        )
    if pred.shape[1:] != (h, w):
        raise PredictionFileError(
            f"Prediction {path} is {pred.shape[1]} x {pred.shape[2]} px, its input image is {h} x {w} px "
            f"(the truth {fimg.shape[1]} x {fimg.shape[2]} px): {fix}."
        )
    if pcrs != crs:
        raise PredictionFileError(
            f"Prediction {path} has CRS {pcrs or 'none'}, the truth image {crs or 'none'}: {fix}."
        )
    if not np.allclose(tuple(ptf)[:6], tuple(tf)[:6], rtol=1e-9, atol=1e-6 * max(abs(tf.a), abs(tf.e), 1e-12)):
        raise PredictionFileError(
            f"Prediction {path} has transform {tuple(ptf)[:6]}, its input image {tuple(tf)[:6]}: {fix}."
        )


# --------------------------------------------------------------------------- tiles


def _cut_pair(row: dict, past, future, pred, tile: int, block: int, first_id: int) -> tuple[pd.DataFrame, dict]:
    """Tiles of one image pair over the common extent of past and future (every pixel covered)."""
    from stsynth_lib.data.blocks import block_of
    from stsynth_lib.data.build import tile_grid, tile_transform

    (pimg, pval, pmask, tf, crs), (fimg, fval, fmask, _, _) = past, future
    h, w = min(pimg.shape[1], fimg.shape[1]), min(pimg.shape[2], fimg.shape[2])
    grid = tile_grid(h, w, tile)

    def cut(a: np.ndarray) -> np.ndarray:
        return np.stack([a[..., r : r + tile, c : c + tile] for r, c in grid])

    blocks = [block_of(r, c, tile, block) or ((r + tile // 2) // block, (c + tile // 2) // block) for r, c in grid]
    rows = pd.DataFrame(
        {
            "pair_id": np.arange(first_id, first_id + len(grid)),
            "source_pair_id": row["pair_id"],
            "aoi": row["aoi"],
            "gap_months": int(row["gap_months"]),
            "past_date": row["past_date"],
            "future_date": row["future_date"],
            "row_off": [r for r, _ in grid],
            "col_off": [c for _, c in grid],
            "tile_size_px": tile,
            "block_row": [b[0] for b in blocks],
            "block_col": [b[1] for b in blocks],
            "image_height": h,
            "image_width": w,
            "has_mask": bool(row["has_mask"]),
            "crs": crs,
            "prediction": row["prediction"],
        }
    )
    arrays = {
        "past": cut(pimg),
        "future": cut(fimg),
        "pred": cut(pred),
        "past_mask": cut(pmask[None]),
        "future_mask": cut(fmask[None]),
        "valid": cut((pval * fval)[None].astype(np.uint8)),
        "transform": np.array([tuple(tile_transform(tf, r, c))[:6] for r, c in grid], np.float64),
    }
    return rows, arrays


def load_folder(
    pred_dir: str | Path,
    data_root: str | Path,
    tile_size_px: int = 128,
    block_size_px: int = 256,
    bands: Sequence[int] = (1, 2, 3),
    notes: list[str] | None = None,
    progress: bool = True,
) -> tuple[SplitData, np.ndarray, pd.DataFrame]:
    """(the tiles' ground truth, the prediction tiles aligned with it, the checked index.csv)."""
    from tqdm.auto import tqdm

    notes = [] if notes is None else notes
    pred_dir = Path(pred_dir)
    if tile_size_px < 8 or block_size_px < tile_size_px:
        raise EvalInputError(
            f"--tile-size-px {tile_size_px} / --block-size-px {block_size_px}: the tile size must be >= 8 "
            "and the block size >= the tile size (ideally a multiple of it)."
        )
    index = read_index(pred_dir)
    pasts, futures = locate_images(index, data_root, pred_dir / "index.csv", notes, progress)
    tiles, cache, n, cropped = _Tiles(), {}, 0, 0
    for row, prow, frow in tqdm(
        list(zip(index.to_dict("records"), pasts, futures)),
        desc="read and tile images",
        unit="pair",
        disable=not progress,
    ):
        past, future = (_cached_read(cache, r, bands) for r in (prow, frow))
        path = pred_dir / str(row["prediction"]).strip()
        pred, ptf, pcrs = _read_prediction(path, pred_dir / "index.csv", row["line"])
        _check_prediction(pred, ptf, pcrs, past, future, path, bands)
        cropped += past[0].shape != future[0].shape
        row["has_mask"] = bool(prow["has_labels"] and frow["has_labels"])
        rows, arrays = _cut_pair(row, past, future, pred, tile_size_px, block_size_px, n)
        tiles.add(rows, **arrays)
        n += len(rows)
    if cropped:
        notes.append(
            f"{cropped} pair(s) have past and future images of different sizes (SpaceNet 7 sizes vary by a "
            "pixel or two): scored on their common top-left extent."
        )
    pairs = pd.concat(tiles.rows, ignore_index=True)
    data = SplitData(
        pairs=pairs,
        past=tiles.stack("past"),
        future=tiles.stack("future"),
        past_mask=tiles.stack("past_mask"),
        future_mask=tiles.stack("future_mask"),
        valid=tiles.stack("valid"),
        has_mask=pairs["has_mask"].to_numpy(bool),
        transform=tiles.stack("transform"),
        crs=pairs["crs"].astype(str).tolist(),
    )
    return data, tiles.stack("pred"), index


def _cached_read(cache: dict, row: dict, bands: Sequence[int]):
    """The builder's reading of one scanned image (image, validity, footprints, transform, CRS); one AOI kept."""
    from stsynth_lib.data.build import read_image

    if cache and next(iter(cache.values()))[0] != row["aoi"]:
        cache.clear()  # index rows are grouped by AOI: keep one AOI's images in memory at a time
    if row["image_path"] not in cache:
        cache[row["image_path"]] = (row["aoi"], read_image(row, tuple(bands), False, "auto"))
    return cache[row["image_path"]][1]


# --------------------------------------------------------------------------- scoring


def evaluate_folder(pred_dir: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
                    name: str | None = None, tile_size_px: int = 128, block_size_px: int = 256,
                    bands: Sequence[int] = (1, 2, 3), segmenter_path: str | Path | None = None,
                    compute_lpips: bool = True, lpips_net: str = "alex", allow_uncalibrated: bool = False,
                    device: str = "cpu", n_boot: int = 1000, psnr_cap_db: float = 100.0, seed: int = 0,
                    progress: bool = True) -> EvalResult:
    """Score the whole-image predictions of ``pred_dir`` and persistence against ``data_root`` (see the module).

    Writes per_tile.csv, summary.csv, summary.json, paired_vs_persistence.csv, results.md and tiles.csv (each
    tile's pair, offsets and block) under ``out_dir`` (default ``<pred_dir>/eval``).
    """
    from stsynth_lib.evaluate.report import save_results
    from stsynth_lib.evaluate.scoring import resampling_clusters, score_split
    from stsynth_lib.runs import atomic_write_text

    notes: list[str] = []
    segmenter = _load_segmenter(segmenter_path, device)
    data, pred, index = load_folder(pred_dir, data_root, tile_size_px, block_size_px, bands, notes, progress)
    name = _model_name(index, name, Path(pred_dir))
    if index["used_mask"].any():
        notes.append(f"{int(index['used_mask'].sum())} of {len(index)} predictions were made with the future "
                     "building mask as guidance (used_mask in index.csv).")
    one_area = data.pairs["aoi"].nunique() == 1
    clusters = resampling_clusters(data.pairs) if one_area else data.pairs["aoi"].astype(str).to_numpy()
    ones = np.ones(len(data), bool)
    res = score_split(data, {PERSISTENCE: data.past, name: pred}, {PERSISTENCE: ones, name: ones}, notes=notes,
                      clusters=clusters, segmenter=segmenter, lpips_net=lpips_net,
                      allow_uncalibrated=allow_uncalibrated, compute_lpips=compute_lpips, device=device,
                      n_boot=n_boot, psnr_cap_db=psnr_cap_db, seed=seed, split="scored", progress=progress,
                      no_segmenter_note="Building scores skipped: no --segmenter given (pass runs/<profile>/segmenter/"
                                        "segmenter.pt to score building F1 and new-building F1 on a labelled tree).")
    meta = _meta(pred_dir, data_root, index, data, name, tile_size_px, block_size_px, one_area, clusters, res,
                 lpips_net, segmenter_path)
    out = Path(out_dir) if out_dir is not None else Path(pred_dir) / "eval"
    unit = f"whole blocks of {block_size_px} px (one area)" if one_area else "whole areas (AOIs)"
    res.out_dir = save_results(res, out, meta=meta, header=_header(meta), resample_unit=unit)
    atomic_write_text(out / "tiles.csv", data.pairs.to_csv(index=False))
    return res


def _model_name(index: pd.DataFrame, name: str | None, pred_dir: Path) -> str:
    """``--name``, else index.csv's one model (several: refused), else the folder's name; baselines' names refused."""
    models = sorted(set(index["model"].str.strip()) - {""})
    if name is None and len(models) > 1:
        raise EvalInputError(f"{pred_dir / 'index.csv'} lists predictions of several models ({', '.join(models)}): "
                             "score one model's folder at a time.")
    name = name or (models[0] if models else pred_dir.name)
    if name in (PERSISTENCE, UPPER_BOUND):
        raise EvalInputError(f"The model name {name!r} is reserved for a baseline: pass --name <another name>.")
    return name


def _load_segmenter(path, device: str):
    if path is None:
        return None
    from stsynth_lib.metrics.segmentation import load_segmenter

    if not Path(path).is_file():
        raise EvalInputError(
            f"--segmenter {path} does not exist: pass runs/<profile>/segmenter/segmenter.pt (chapter 6 "
            "trains it), or leave --segmenter out to skip the building scores."
        )
    return load_segmenter(path, device=device)[0]


def _meta(pred_dir, data_root, index, data, name, tile, block, one_area, clusters, res, lpips_net, seg) -> dict:
    runs = sorted(set(index["run"].astype(str).str.strip()) - {""})
    return {
        "pred_dir": str(Path(pred_dir).resolve()),
        "data_root": str(Path(data_root).resolve()),
        "model": name,
        "runs": runs,
        "n_image_pairs": len(index),
        "n_tiles": len(data),
        "tile_size_px": int(tile),
        "block_size_px": int(block),
        "n_aois": int(data.pairs["aoi"].nunique()),
        "n_labelled_pairs": int(data.pairs.drop_duplicates("source_pair_id")["has_mask"].sum()),
        "clusters": "blocks" if one_area else "areas",
        "n_clusters": len(set(clusters)),
        "lpips_net": lpips_net if res.lpips_weights else None,
        "lpips_weights": res.lpips_weights,
        "segmenter": str(seg) if seg else None,
    }


def _header(meta: dict) -> str:
    unit = (
        f"{plural(meta['n_clusters'], 'block')} of {meta['block_size_px']} px (one area)"
        if meta["clusters"] == "blocks"
        else f"{meta['n_clusters']} whole areas (AOIs)"
    )
    runs = ", ".join(f"`{r}`" for r in meta["runs"]) or "?"
    return "\n".join(
        [
            f"# Scores of `{meta['pred_dir']}`",
            "",
            f"- predictions: `{meta['pred_dir']}` (model `{meta['model']}`, run {runs})",
            (
                f"- truth: SpaceNet 7 tree `{meta['data_root']}`, {meta['n_aois']} AOI(s); "
                f"{meta['n_labelled_pairs']} of {meta['n_image_pairs']} pairs have building labels"
            ),
            (
                f"- {meta['n_image_pairs']} image pairs cut into {meta['n_tiles']} tiles of {meta['tile_size_px']} px "
                "covering every pixel (the last row/column of tiles shifts inward); persistence = the past image"
            ),
            f"- paired intervals resample {unit}",
        ]
    )
