"""The options schema (issue 31): each option declared once, and what is generated from or checked against it."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import PROJECT_ROOT

from stsynth_lib import options as schema
from stsynth_lib.options import scoring
from stsynth_lib.options.core import Option, options_of
from stsynth_lib.options.docs import options_markdown
from stsynth_lib.options.notebooks import (
    NOTEBOOKS,
    cell_differences,
    notebook_options,
    options_cell_text,
    parameters_cell_text,
)

NOTEBOOK_FILES = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_every_notebook_is_listed_and_every_option_is_declared_once():
    assert {p.stem for p in NOTEBOOK_FILES} == set(NOTEBOOKS)
    every = schema.all_options()
    assert len(every) == sum(len(c.options) for c in schema.CONCERNS)
    taken = set().union(*(notebook_options(s) for s in NOTEBOOKS)) | {o.name for o in schema.CONTROLNET_TRAIN}
    assert taken == set(every), "an option no notebook and no config takes"


def test_a_new_option_appears_in_the_notebook_cell_the_cli_help_and_the_docs_with_no_other_edit(monkeypatch, capsys):
    """One declaration: add it to a concern, and chapter 6's cell, evaluate's --help and docs/OPTIONS.md have it."""
    from stsynth_lib.evaluate.__main__ import parse_args

    dummy = Option("dummy_margin_px", int, 7, "a dummy option of this test", min=1)
    monkeypatch.setattr(scoring.SCORING, "options", (*scoring.SCORING.options, dummy))

    assert "\ndummy_margin_px = 7 " in parameters_cell_text("06_evaluate")
    assert "dummy_margin_px" in notebook_options("06_evaluate")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--dummy-margin-px" in help_text and "a dummy option of this test" in help_text
    assert parse_args(["--pred", "p", "--data", "d", "--dummy-margin-px", "3"]).dummy_margin_px == 3
    assert "| `dummy_margin_px` | `7` | an integer >= 1 | a dummy option of this test | 6 |" in options_markdown()


@pytest.mark.parametrize("nb", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_parameters_cells_state_the_schema_defaults(nb):
    """A notebook's parameters cell states exactly its options with their schema defaults."""
    assert cell_differences(nb.read_text(), nb.stem) == []


def test_a_notebook_cell_stating_another_default_fails():
    nb = PROJECT_ROOT / "notebooks" / "03_train_cgan.py"
    text = nb.read_text()
    assert "\nngf = 64 " in text
    problems = cell_differences(text.replace("\nngf = 64 ", "\nngf = 32 ", 1), nb.stem)
    assert problems == ["03_train_cgan: ngf = 32 in the cell, 64 in the schema"]
    problems = cell_differences(text.replace("\nlr = 0.0002 ", "\nlr = 2 ", 1), nb.stem)
    assert problems == ["03_train_cgan: lr = 2 in the cell, 0.0002 in the schema"]
    problems = cell_differences(text.replace("\nngf = 64 ", "\nngf_extra = 64\nngf = 64 ", 1), nb.stem)
    assert problems == ["03_train_cgan: ngf_extra is not an option of this notebook in the schema"]


@pytest.mark.parametrize("nb", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_pass_their_options_by_name_never_globals(nb):
    text = nb.read_text()
    assert "globals()" not in text and "from_params" not in text
    assert options_cell_text(nb.stem) in text


def test_the_configs_are_built_from_the_schema():
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    for cls, declared in ((CGANTrainConfig, schema.CGAN_TRAIN), (ControlNetTrainConfig, schema.CONTROLNET_TRAIN)):
        assert [f.name for f in dataclasses.fields(cls)] == [o.name for o in declared]
        assert options_of(cls) == list(declared)
        config = cls()
        assert all(getattr(config, o.name) == o.default for o in declared)
    # the generated cell passes exactly the config's fields
    text = options_cell_text("03_train_cgan")
    trainer = set(schema.TRAINER.names())  # packed: the mapping training carries them
    assert all(f"{o.name}={o.name}" in text for o in schema.CGAN_TRAIN if o.name not in trainer)
    assert '**unpack("training", training)' in text and not any(f"{n}={n}" in text for n in trainer)


@pytest.mark.parametrize("kw, words", [
    ({"radiometric_jitter": 1.0}, "radiometric_jitter must be a number in [0, 1)"),
    ({"model": "unet"}, "model must be one of 'pix2pix', 'attention_unet'"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"lr": "fast"}, "lr must be a number > 0"),
    ({"checkpoints_total_limit": 0}, "checkpoints_total_limit must be an integer >= 1 or null"),
])
def test_range_checks_come_from_the_declarations(kw, words):
    from stsynth_lib.cgan.config import CGANTrainConfig

    with pytest.raises(ValueError) as err:
        CGANTrainConfig(**kw)
    assert words in str(err.value)


def test_params_check_and_config_agree_on_a_range(tmp_path):
    """radiometric_jitter: 'params' and the config used to disagree (>= 0 there, [0, 1) here); one rule now."""
    from stsynth_lib.params import ParamError, validate_params

    common = PROJECT_ROOT / "params" / "smoke" / "common.yaml"
    own = tmp_path / "03_train_cgan.yaml"
    own.write_text("radiometric_jitter: 1.5\n")
    with pytest.raises(ParamError, match=r"radiometric_jitter: 1.5 -- accepted values: a number in \[0, 1\)"):
        validate_params(PROJECT_ROOT / "notebooks" / "03_train_cgan.py", [common, own])


def test_evaluate_cli_refuses_a_value_out_of_range(capsys):
    from stsynth_lib.evaluate.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--pred", "p", "--data", "d", "--n-bootstrap", "0"])
    assert "an integer >= 1" in capsys.readouterr().err


def test_readme_links_the_options_page():
    assert "](docs/OPTIONS.md)" in (PROJECT_ROOT / "README.md").read_text()


def test_the_trainers_bookkeeping_travels_packed_and_is_checked(tmp_path):
    """Both training chapters take the trainer concern as one mapping (training = {}): params merge packs the flat
    keys of the parameter files into it, unpack checks each against its declaration before the config sees it."""
    import yaml

    from stsynth_lib.options.notebooks import cell_parameters, pack, unpack
    from stsynth_lib.params import main as params_main

    assert cell_parameters("03_train_cgan")["training"] == {} and "max_train_pairs" not in cell_parameters("03_train_cgan")
    assert "training" in cell_parameters("05_controlnet") and "training" not in cell_parameters("06_evaluate")
    out = tmp_path / "merged.yaml"
    assert params_main(["merge", "--notebook", "notebooks/03_train_cgan.py", "--out", str(out),
                        "params/smoke/common.yaml", "params/smoke/03_train_cgan.yaml"]) == 0
    merged = yaml.safe_load(out.read_text())
    assert merged["training"] == {"max_train_pairs": 320, "max_val_pairs": 64, "log_every_steps": 5}
    assert "max_train_pairs" not in merged and merged["ngf"] == 32
    assert pack("06_evaluate", {"seed": 1}) == {"seed": 1}
    assert unpack("training", {"max_val_pairs": 64, "resume_from_checkpoint": "latest"}) == {
        "max_val_pairs": 64, "resume_from_checkpoint": "latest"}
    with pytest.raises(ValueError, match="max_trian_pairs: not an option of training"):
        unpack("training", {"max_trian_pairs": 3})
    with pytest.raises(ValueError, match="max_val_pairs = 0"):
        unpack("training", {"max_val_pairs": 0})
