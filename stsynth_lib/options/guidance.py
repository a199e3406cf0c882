"""Options of what a model sees besides the past image (stsynth_lib.conditioning): masks, time, past frames."""

from stsynth_lib.options.core import Concern, Option

GUIDANCE = Concern("guidance", "Guidance", (
    Option("use_mask", "auto", "auto", "the future building mask as input: auto (when the dataset has labels) | "
           "true | false"),
    Option("use_past_mask", bool, False, "also the past mask (which future buildings are new); labelled data only"),
    Option("time_encoding", str, "planes", "planes (gap and month as constant channels) | none",
           choices=("planes", "none")),
    Option("gap_scale_months", float, 24.0, "the gap plane is gap_months / gap_scale_months", min=0, min_open=True),
    Option("use_month", bool, True, "add sin/cos of the future month of year"),
    Option("context_offsets_months", list, None, "earlier frames as extra channels, e.g. [0, -1, -2, "
           "same_month_last_year] (months <= 0 from the past image); null: the past image only", none_ok=True),
    Option("residual_base", str, "past", "the residual's start: past | seasonal (needs same_month_last_year) | "
           "linear (a per-gap blend of the frames fitted on train)", choices=("past", "seasonal", "linear")),
    Option("linear_centre", str, "none", "residual_base linear: none (blend around 0) | tile_mean (around the tile's "
           "mean colour)", choices=("none", "tile_mean")),
))
