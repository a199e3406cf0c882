"""``<folder>/index.csv`` of whole-image predictions (``python -m stsynth_lib.predict --out <folder>``), checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsynth_lib.predict.files import PredictionFileError

INDEX_COLUMNS = (
    "pair_id",
    "aoi",
    "past_date",
    "future_date",
    "gap_months",
    "past_image",
    "future_image",
    "prediction",
    "used_mask",
    "model",
    "run",
)
PREDICT_HINT = "write it with python -m stsynth_lib.predict --run <run folder> --data <SpaceNet 7 tree> --out <folder>"


# --------------------------------------------------------------------------- index.csv


def _month(text: Any, index: Path, line: int, column: str) -> tuple[int, int]:
    try:
        ts = pd.Timestamp(str(text).strip() + "-01") if len(str(text).strip()) == 7 else pd.Timestamp(str(text))
    except (ValueError, TypeError):
        raise PredictionFileError(
            f"{index}, line {line}: {column} {text!r} is not a month 'YYYY-MM'; {PREDICT_HINT}."
        ) from None
    return ts.year, ts.month


def _flag(text: Any) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


def read_index(pred_dir: str | Path) -> pd.DataFrame:
    """``<pred_dir>/index.csv`` checked: the columns of :data:`INDEX_COLUMNS`, months, gaps, one row per pair.

    Adds ``line`` (its line in the file), ``past_year/past_month/future_year/future_month`` and ``used_mask`` as bool.
    """
    index = Path(pred_dir) / "index.csv"
    if not Path(pred_dir).is_dir():
        raise PredictionFileError(
            f"Prediction folder {pred_dir} does not exist: {PREDICT_HINT}, then pass --pred <folder>."
        )
    if not index.is_file():
        raise PredictionFileError(f"{index} not found: {pred_dir} is not a predictions folder; {PREDICT_HINT}.")
    try:
        df = pd.read_csv(index, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PredictionFileError(
            f"{index} cannot be read as CSV ({type(exc).__name__}: {exc}); {PREDICT_HINT}."
        ) from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise PredictionFileError(
            f"{index}: columns {missing} are missing (header {list(df.columns)}); expected "
            f"'{','.join(INDEX_COLUMNS)}', as stsynth_lib.predict writes. Re-run the predictions."
        )
    if df.empty:
        raise PredictionFileError(f"{index} lists no prediction; {PREDICT_HINT}.")
    df["line"] = np.arange(len(df)) + 2
    for col, key in (("past_date", "past"), ("future_date", "future")):
        ym = [_month(v, index, n, col) for v, n in zip(df[col], df["line"])]
        df[f"{key}_year"], df[f"{key}_month"] = [y for y, _ in ym], [m for _, m in ym]
    gap = (df["future_year"] - df["past_year"]) * 12 + df["future_month"] - df["past_month"]
    stated = pd.to_numeric(df["gap_months"], errors="coerce")
    bad = (gap < 1) | (stated != gap)
    if bad.any():
        r = df[bad].iloc[0]
        raise PredictionFileError(
            f"{index}, line {r['line']}: past_date {r['past_date']} and future_date {r['future_date']} "
            f"do not give gap_months {r['gap_months']!r} (t1 must follow t0). Re-run the predictions."
        )
    df["gap_months"] = gap.astype(int)
    dup = df.duplicated(["aoi", "past_date", "future_date"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise PredictionFileError(
            f"{index}: pair {r['aoi']} {r['past_date']} -> {r['future_date']} is listed more than once "
            f"(lines {', '.join(map(str, df.loc[dup, 'line'].head(4)))}); keep one prediction per pair."
        )
    df["used_mask"] = df["used_mask"].map(_flag)
    df["aoi"] = df["aoi"].str.strip()
    return df
