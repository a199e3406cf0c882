"""Stamp executed notebooks, publish a reference run into the book, and generate the results pages.

    python -m stsynth_lib.book.publish stamp book/executed/smoke/06_evaluate.ipynb --profile smoke
    python -m stsynth_lib.book.publish publish --profile sn7_real_128     # book/executed/<p>/ -> book/reference/<p>/
    python -m stsynth_lib.book.publish stage --source reference --out build/book   # what `make book` builds
    python -m stsynth_lib.book.publish readme [--check]                    # README results block

Every number on the landing page and in the README's results block is formatted here from a ``summary.json``
written by chapter 6 (never typed), and every verdict is worded by :mod:`stsynth_lib.verdict` from the paired
interval. The package imports only the standard library and PyYAML at the top, so `make book` runs it in a light
environment (jupyter-book alone: no numpy, pandas or torch; ``tests/test_book_light.py`` checks it); Pillow is
imported only to shrink figures when publishing. Of stsynth_lib it imports only :mod:`~stsynth_lib.book.report_format`
and :mod:`~stsynth_lib.verdict` (standard library too).

* :mod:`~stsynth_lib.book.publish.stamp`: notebook read/write, the run stamp (commit, machine, wall time) and its
  banner;
* :mod:`~stsynth_lib.book.publish.reference`: clean an executed notebook, shrink its figures, publish a reference run;
* :mod:`~stsynth_lib.book.publish.pages`: results tables, the strongest-baseline section, the staged book and its
  landing page, the README's results block;
* :mod:`~stsynth_lib.book.publish.facts`: what a published run can and cannot show, and the landing page's glossary,
  from the run's own files;
* :mod:`~stsynth_lib.book.publish.cli` (``__main__``): the command line.
"""

from __future__ import annotations

# Every name of the modules below stays reachable as stsynth_lib.book.publish.<name>, as before the package split
# (private helpers included: the tests use some).
from stsynth_lib.book.publish.cli import main
from stsynth_lib.book.publish.pages import (
    HEADLINE_METRICS,
    NOT_A_PREDICTOR,
    PERSISTENCE,
    README_END,
    README_START,
    STRONGEST_METRICS,
    NEW_BUILDING_METRICS,
    _fmt,  # noqa: F401
    _model_order,  # noqa: F401
    _no_interval,  # noqa: F401
    _profile_sources,  # noqa: F401
    headline_section,
    headline_sentence,
    new_building_section,
    new_building_sentence,
    headline_table,
    landing_page,
    figure_block,
    lpips_calibrated,
    model_legend,
    model_name,
    persistence_sentence,
    profile_stamp,
    readme_block,
    stage_book,
    strongest_baseline_section,
    table_caption,
    update_readme,
)
from stsynth_lib.book.publish.reference import (
    _VOLATILE_NB_PAPERMILL,  # noqa: F401
    _WIDGET,  # noqa: F401
    MAX_PNG_BYTES,
    MAX_PNG_PX,
    MIN_PNG_PX,
    MAX_TOTAL_MB,
    _dir_mb,  # noqa: F401
    clean_notebook,
    encode_png,
    merge_streams,
    publish,
    shrink_png,
)
from stsynth_lib.book.publish.stamp import (
    EXECUTED_ROOT,
    HIDE_TAGS,
    REFERENCE_ROOT,
    STAMP_TAG,
    PublishError,
    _src,  # noqa: F401
    _tags,  # noqa: F401
    banner_text,
    format_duration,
    git_commit,
    head_commit,
    machine_description,
    profile_data_kind,
    read_nb,
    read_stamp,
    stamp_notebook,
    write_nb,
)

__all__ = [
    "EXECUTED_ROOT", "HEADLINE_METRICS", "HIDE_TAGS", "MAX_PNG_BYTES", "MAX_PNG_PX", "MAX_TOTAL_MB", "MIN_PNG_PX", "NOT_A_PREDICTOR",
    "PERSISTENCE", "README_END", "README_START", "REFERENCE_ROOT", "STAMP_TAG", "STRONGEST_METRICS", "NEW_BUILDING_METRICS", "PublishError",
    "banner_text", "clean_notebook", "merge_streams", "format_duration", "git_commit", "head_commit", "headline_section",
    "headline_sentence", "headline_table", "new_building_section", "new_building_sentence",
    "figure_block", "landing_page", "lpips_calibrated", "machine_description", "model_legend", "model_name", "main", "persistence_sentence", "profile_data_kind",
    "profile_stamp", "publish", "read_nb",
    "read_stamp", "readme_block", "encode_png", "shrink_png", "stage_book", "stamp_notebook",
    "strongest_baseline_section", "table_caption", "update_readme", "write_nb",
]
