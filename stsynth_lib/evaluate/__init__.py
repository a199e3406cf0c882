"""Score every model and the persistence baseline on the same test tiles; tables, galleries, curves, FID.

Entry points
------------
* :func:`evaluate_models` -- per-tile metrics (PSNR, SSIM, L1, LPIPS; the same over changed / unchanged
  footprint pixels; building precision/recall/F1/IoU and new-building scores through a segmenter)
  for ``persistence`` (future = past, computed from the dataset), every model's saved predictions
  and the real future images (segmentation upper bound). Writes ``per_tile.csv``, ``summary.csv``,
  ``summary.json`` and ``results.md`` under ``out_dir``. It loads a tile store's split and the prediction folders,
  then calls :func:`score_split`, which scores any arrays (:class:`SplitData` + ``{name: uint8 images}``).
* ``python -m stsynth_lib.evaluate --pred <folder> --data <SN7 tree>`` (:mod:`stsynth_lib.evaluate.folder`) --
  the same scores for whole-image predictions (``stsynth_lib.predict --out``), cut into tiles.
* ``evaluate_models(..., baselines=("mean_last_3", "seasonal"))`` -- simple baselines (:mod:`stsynth_lib.baselines`)
  from the store's past frames, scored like models; :func:`strongest_baseline` names the best one on a metric and
  :func:`paired_vs_baseline` compares every model with it (:func:`paired_vs_persistence`: with persistence).
* :func:`summarise` / :func:`results_table` -- mean and 95 % bootstrap interval over tiles and the wide table of the
  book (these intervals describe; they never decide); :func:`persistence_verdict` -- the verdict in words, from the
  paired interval over whole areas or blocks: which model is better than persistence, worse, or not clearly
  different, on what (:mod:`stsynth_lib.verdict`, the project's one rule); :func:`results_markdown` -- results.md
  from a summary.json.
* :func:`gallery` / :func:`plot_metric_vs_gap` -- best / median / worst tiles, metric vs time gap.
* :func:`paired_gain_by_gap` / :func:`plot_gain_by_gap` -- each model minus each baseline per time-gap bucket (where
  a gain comes from); :func:`paired_gain_by_area` / :func:`plot_gain_by_area` -- the same per area, against the
  area's persistence level (is a gain broad or carried by a few areas); :func:`plot_sequence_examples` -- past
  sequence | truth | models.
* :mod:`stsynth_lib.evaluate.track_record` -- a past-only guard: per pair, the candidate (a model or a baseline) that
  scored best on the same tile's earlier pairs. Validation rejected it for the sn7_real_128 cGANs (every variant scored
  0.004-0.36 dB under the unguarded model, better in no area:
  ``experiments/temporal_context/track_record_val.py``); kept to re-check that on other data.
* :func:`guidance_gain` -- what the footprints add: each guided model minus its no-mask twin (chapter 6's
  ``twins``); :func:`kfold_paired` -- the same pooled over the folds of ``experiments/guidance_kfold``.
* :func:`fid_report` -- FID and KID per model, per gap bucket, and of persistence (notebook 07).
* :func:`model_labels` -- the name tables show for each model: a ControlNet's row names its backbone
  ("ControlNet [tiny random backbone]"), read from the run's params.yaml and recorded in summary.json
  (``model_labels``); pass ``labels=res.labels`` to :func:`results_table` / :func:`paired_table`.

All images are compared in [0, 1] (``uint8 / 255``, ``data_range = 1``) over valid pixels
(``past_valid * future_valid``); LPIPS gets the same images in [-1, 1].
"""


from stsynth_lib.evaluate.guidance import (  # noqa: F401
    GUIDANCE_METRICS,
    guidance_gain,
    judge_quality,
    kfold_paired,
    kfold_report,
)

from stsynth_lib.evaluate.data import (  # noqa: F401
    CHANGE_METRICS,
    DEFAULT_GAP_EDGES,
    LPIPS_METRICS,
    METRICS,
    PERSISTENCE,
    UPPER_BOUND,
    SplitData,
    gap_bucket,
    gap_bucket_order,
    load_split,
    model_labels,
    seasonal_coverage_note,
)
from stsynth_lib.evaluate.report import (  # noqa: F401
    fid_report,
    fid_table,
    gallery,
    negative_kid_note,
    skipped_buckets_note,
    weights_line,
    plot_metric_vs_gap,
    prediction_dirs,
    record_strongest_baseline,
    results_markdown,
    save_results,
)
from stsynth_lib.evaluate.scoring import (  # noqa: F401
    EvalResult,
    baseline_images,
    evaluate_models,
    resampling_clusters,
    score_split,
    scoring_device,
)
from stsynth_lib.evaluate.figures import (  # noqa: F401
    plot_fid_by_gap,
    plot_gain_by_area,
    plot_gain_by_gap,
    plot_metrics_vs_gap,
    plot_sequence_examples,
)
from stsynth_lib.evaluate.stats import (  # noqa: F401
    VERDICT_METRICS,
    paired_gain_by_area,
    paired_gain_by_gap,
    paired_table,
    paired_vs_baseline,
    paired_vs_persistence,
    persistence_verdict,
    results_table,
    rows_vs_persistence,
    strongest_baseline,
    summarise,
)
