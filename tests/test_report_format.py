"""The book's formatting helpers: no raw dicts, no 16-digit floats, no nan intervals, no "1 months"."""

import dataclasses
import math

import numpy as np
import pytest
import pandas as pd

from stsynth_lib.book.report_format import fix_plurals, fmt_value, format_interval, plural, round_floats, settings_table


def test_plural_and_fix_plurals():
    assert plural(1, "month") == "1 month" and plural(2, "month") == "2 months" and plural(0, "area") == "0 areas"
    assert plural(1.0, "block") == "1 block" and plural(3, "AOI") == "3 AOIs"
    assert fix_plurals("satellite image, July 2019, 1 months later, 1 new buildings") == \
        "satellite image, July 2019, 1 month later, 1 new building"
    # other counts, decimals and multi-digit numbers are left alone
    text = "11 months later, 21 new buildings, 0.1 months, 2 months later, 0 new buildings, 1 class"
    assert fix_plurals(text) == text


def test_prompt_reads_naturally_for_one_month():
    import torch

    from stsynth_lib.controlnet.conditioning import DEFAULT_PROMPT_TEMPLATE, build_prompt

    fm = torch.zeros(1, 16, 16)
    fm[0, 2:4, 2:4] = 1
    sample = {"future_mask": fm, "past_mask": torch.zeros(1, 16, 16), "has_mask": torch.tensor(True), "aoi": "A",
              "future_month": torch.tensor(2), "future_year": torch.tensor(2019), "past_month": torch.tensor(1),
              "past_year": torch.tensor(2019), "gap_months": torch.tensor(1.0)}
    prompt = build_prompt(sample, DEFAULT_PROMPT_TEMPLATE)
    assert "1 month later" in prompt and "1 new building" in prompt
    assert "months later" not in prompt and "new buildings" not in prompt
    sample["gap_months"] = torch.tensor(3.0)
    assert "3 months later" in build_prompt(sample, DEFAULT_PROMPT_TEMPLATE)


def test_fmt_value_rounds_floats():
    assert fmt_value(0.9774104237556458) == "0.9774"
    assert fmt_value(211.3706460529993) == "211.4"
    assert fmt_value(0.00015653831226758452) == "0.0001565"
    assert fmt_value(1e-8) == "1.000e-08"
    assert fmt_value(100.0) == "100" and fmt_value(0.0002) == "0.0002"
    assert fmt_value(None) == "none" and fmt_value(True) == "yes" and fmt_value(float("nan")) == "n/a"
    assert fmt_value([1, 2, 3]) == "1, 2, 3" and fmt_value(np.float32(0.5)) == "0.5" and fmt_value(12000) == "12,000"


def test_nested_values_print_without_braces_or_long_floats():
    """A model.yaml's fitted linear start (a list of mappings) printed as a dict dump with 5-decimal weights, two
    book-check findings in chapter 3."""
    fitted = [{"gap_months": g, "weights": [0.53642, 0.12699], "bias": -0.01175} for g in (1, 2, 3)]
    assert fmt_value(fitted) == "3 rows of gap_months, weights, bias"
    assert fmt_value({"gap_months": 1, "weights": [0.536421, 0.12699]}) == "gap_months 1; weights 0.5364, 0.127"
    rows = dict(zip(*settings_table({"guidance": {"linear_base": fitted, "k": 2}}).to_dict("list").values()))
    assert rows == {"guidance / linear_base": "3 rows of gap_months, weights, bias", "guidance / k": "2"}


def test_settings_table_shows_no_row_numbers():
    t = settings_table({"a": 1, "b": 2})
    assert list(t.index) == ["", ""] and "0" not in t.to_html().split("<tbody>")[1].split("<td>")[0]


def test_settings_table_from_dict_dataclass_and_yaml(tmp_path):
    d = {"final_loss": 0.9774104237556458, "step": 200, "guidance": {"n_bands": 3, "use_mask": True},
         "channels": ["past_b1", "past_b2"], "lambda_l1": 100.0}
    t = settings_table(d, labels={"lambda_l1": "L1 weight"})
    assert list(t.columns) == ["setting", "value"]
    rows = dict(zip(t["setting"], t["value"]))
    assert rows == {"final_loss": "0.9774", "step": "200", "guidance / n_bands": "3", "guidance / use_mask": "yes",
                    "channels": "past_b1, past_b2", "L1 weight": "100"}
    assert "{" not in t.to_string()

    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.000123456789
        name: str = "x"
        run_name: str | None = None

    t = settings_table(Cfg(), exclude=["run_name"])
    assert dict(zip(t["setting"], t["value"])) == {"lr": "0.0001235", "name": "x"}
    f = tmp_path / "s.yaml"
    f.write_text("wall_s: 211.3706460529993\nbackbone: tiny-random\n")
    assert dict(zip(*settings_table(f, keys=["backbone", "wall_s"]).to_dict("list").values())) == \
        {"backbone": "tiny-random", "wall_s": "211.4"}


def test_round_floats_keeps_ints_and_text():
    df = pd.DataFrame({"step": [20, 40], "val_l1": [0.127162123, 0.101821987], "name": ["a", "b"]})
    out = round_floats(df, 4)
    assert list(out["val_l1"]) == [0.1272, 0.1018] and list(out["step"]) == [20, 40] and list(out["name"]) == ["a", "b"]
    wide = df.assign(psnr=[27.427331, 22.1]).pivot_table(index=["name", "psnr"], columns="step", values="val_l1")
    assert list(round_floats(wide, 2).index) == [("a", 27.43), ("b", 22.1)]  # a float index level too
    assert list(round_floats(df.set_index("val_l1"), 2).index) == [0.13, 0.1]


def test_format_interval_one_unit_is_not_nan():
    assert format_interval(float("nan"), float("nan"), 1, "area") == "n/a (1 area)"
    assert format_interval(None, None, 1, "block") == "n/a (1 block)"
    assert format_interval(-0.01234, 0.056789, 5, "area") == "[-0.0123, +0.0568]"
    assert format_interval(1.5, 2.25, digits=2, signed=False) == "[1.50, 2.25]"
    assert "nan" not in format_interval(math.nan, 1.0, 2, "area")


def test_save_figure_png_stays_under_size(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stsynth_lib.evaluate.figures import save_figure_png

    fig, axes = plt.subplots(4, 6, figsize=(14, 10))
    rng = np.random.default_rng(0)
    for ax in axes.flat:  # tile-like images: smooth fields plus a little noise
        yy, xx = np.mgrid[0:64, 0:64] / 64.0
        img = np.stack([np.sin(3 * xx + k) * 0.3 + 0.5 for k in range(3)], -1) + rng.normal(0, 0.02, (64, 64, 3))
        ax.imshow(np.clip(img + 0.2 * (yy > 0.5)[..., None], 0, 1))
    p = save_figure_png(fig, tmp_path / "eval" / "examples.png", max_kb=400)
    assert p.is_file() and p.stat().st_size <= 400 * 1024 and p.read_bytes()[:4] == b"\x89PNG"


def test_replace_marked_block_rewrites_only_between_the_markers(tmp_path):
    from stsynth_lib.book.report_format import delta_vs_persistence_lines, replace_marked_block

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:start -->\nold\n<!-- table:end -->\noutro\n")
    row = {"model": "m", "psnr": 18.654, "psnr_minus_persistence": [0.0741, 0.058, 0.092],
           "ssim_minus_persistence": [0.002, 0.001, 0.004]}
    replace_marked_block(readme, "\n".join(delta_vs_persistence_lines([row], lead=("c",))))
    assert readme.read_text() == ("intro\n<!-- table:start -->\n| c | m | 18.65 | +0.074 [+0.058, +0.092] | "
                                  "+0.002 [+0.001, +0.004] | (not scored) |\n<!-- table:end -->\noutro\n")
    (tmp_path / "other.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="other.md"):
        replace_marked_block(tmp_path / "other.md", "x")
