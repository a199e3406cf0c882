"""Parameter files checked against the options schema (issues 10 and 31): keys, types, values, papermill's input."""

from __future__ import annotations

import pytest
import yaml
from conftest import PROJECT_ROOT

from stsynth_lib.params import ParamError, main, notebook_keys, notebook_parameters, validate_params

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
PROFILES = sorted(p for p in (PROJECT_ROOT / "params").iterdir() if (p / "common.yaml").is_file())
NB03 = PROJECT_ROOT / "notebooks" / "03_train_cgan.py"


@pytest.fixture(scope="module")
def known():
    return notebook_keys(NOTEBOOKS)


def _files(profile, nb):
    own = profile / f"{nb.stem}.yaml"
    return [profile / "common.yaml"] + ([own] if own.is_file() else [])


def _profile(tmp_path, nb_yaml: str, common_drop=()):
    common = yaml.safe_load((PROJECT_ROOT / "params" / "smoke" / "common.yaml").read_text())
    for k in common_drop:
        common.pop(k)
    (tmp_path / "common.yaml").write_text(yaml.safe_dump(common))
    (tmp_path / "03_train_cgan.yaml").write_text(nb_yaml)
    return [tmp_path / "common.yaml", tmp_path / "03_train_cgan.yaml"]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_parameter_file_fits_its_notebooks(profile, known):
    """Every params/<profile>/ file validates against every notebook; the merged keys are options of the notebook."""
    for nb in NOTEBOOKS:
        checked = validate_params(nb, _files(profile, nb), known)
        declared = notebook_parameters(nb)
        assert set(checked.params) <= set(declared)
        own = profile / f"{nb.stem}.yaml"
        if own.is_file():  # a notebook's own keys all reach it
            assert set(yaml.safe_load(own.read_text()) or {}) <= set(checked.params)


def test_typo_names_the_key_the_file_and_the_closest_key(tmp_path, known):
    """lamda_l1 used to be one papermill warning among five routine ones, and otherwise ignored."""
    files = _profile(tmp_path, "lamda_l1: 50\n")
    with pytest.raises(ParamError, match=r"03_train_cgan.yaml: unknown key 'lamda_l1'.*Did you mean 'lambda_l1'\?"):
        validate_params(NB03, files, known)


def test_typo_in_the_shared_file_is_caught_too(tmp_path, known):
    files = _profile(tmp_path, "ngf: 16\n")
    (tmp_path / "common.yaml").write_text((tmp_path / "common.yaml").read_text() + "tile_size: 64\n")
    with pytest.raises(ParamError, match=r"common.yaml: unknown key 'tile_size'.*Did you mean 'tile_size_px'"):
        validate_params(NB03, files, known)


def test_wrong_type_names_key_file_and_expectation(tmp_path, known):
    """lr: "fast" used to end in a TypeError deep inside the optimiser."""
    files = _profile(tmp_path, 'lr: "fast"\nepochs_constant: 2.5\nresidual: "yes"\n')
    with pytest.raises(ParamError) as err:
        validate_params(NB03, files, known)
    msg = str(err.value)
    assert "03_train_cgan.yaml: lr: 'fast' -- expected a number" in msg
    assert "epochs_constant: 2.5 -- expected an integer" in msg
    assert "residual: 'yes' -- expected true/false" in msg


@pytest.mark.parametrize("value", [0, -1, -0.5])
def test_lambda_l1_must_be_positive(tmp_path, known, value):
    """The README says never 0; 0 and negative values used to be accepted."""
    files = _profile(tmp_path, f"lambda_l1: {value}\n")
    with pytest.raises(ParamError, match=r"lambda_l1: .* -- accepted values: a number > 0"):
        validate_params(NB03, files, known)


def test_other_value_rules(tmp_path, known):
    files = _profile(tmp_path, "lr: 0\nnorm: layer\ndevice: gpu\n")
    with pytest.raises(ParamError) as err:
        validate_params(NB03, files, known)
    msg = str(err.value)
    assert "lr: 0" in msg and "norm: 'layer' -- accepted values: one of 'instance', 'batch', 'none'" in msg
    assert "device: 'gpu'" in msg


def test_missing_dataset_dir_does_not_fall_back_to_the_smoke_dataset(tmp_path, known):
    files = _profile(tmp_path, "ngf: 16\n", common_drop=("dataset_dir",))
    with pytest.raises(ParamError, match="dataset_dir is not set .* 'data/smoke/dataset' belongs to the smoke profile"):
        validate_params(NB03, files, known)


def test_yaml_11_exponent_strings_are_read_as_numbers_and_listed(tmp_path, known):
    files = _profile(tmp_path, "lr: 1e-4\n")
    checked = validate_params(NB03, files, known)
    assert checked.params["lr"] == 1e-4 and any("'1e-4'" in c for c in checked.conversions)


def test_every_config_field_is_an_option_of_its_notebook(tmp_path, known):
    """03 builds CGANTrainConfig from its options by name: every field (run_name, ...) is a parameter, typed."""
    checked = validate_params(NB03, _profile(tmp_path, "run_name: trial\n"), known)
    assert checked.params["run_name"] == "trial"
    with pytest.raises(ParamError, match="val_every_epochs: 'often'"):
        validate_params(NB03, _profile(tmp_path, "val_every_epochs: often\n"), known)


def test_merge_cli_writes_only_declared_keys_and_papermill_sees_no_unknown_parameter(tmp_path, caplog):
    """The routine 'Passed unknown parameter' lines (common keys a notebook does not declare) are gone."""
    pytest.importorskip("papermill")
    jupytext = pytest.importorskip("jupytext")
    from papermill.inspection import _infer_parameters

    common = PROJECT_ROOT / "params" / "smoke" / "common.yaml"
    for nb in NOTEBOOKS:
        out = tmp_path / f"{nb.stem}.yaml"
        assert main(["merge", "--notebook", str(nb), "--out", str(out), *map(str, _files(common.parent, nb))]) == 0
        merged = yaml.safe_load(out.read_text())
        nbnode = jupytext.read(nb)
        for cell in nbnode.cells:  # as papermill's load_notebook_node does
            cell.metadata.setdefault("tags", [])
        inferred = {p.name for p in _infer_parameters(nbnode, name="python3", language="python")}
        assert set(merged) <= inferred, (nb.name, set(merged) - inferred)
    assert "synthetic_data" not in yaml.safe_load((tmp_path / "03_train_cgan.yaml").read_text())


def test_check_cli_exit_code_and_message(tmp_path, capsys):
    files = _profile(tmp_path, "lamda_l1: 50\n")
    assert main(["check", "--notebook", str(NB03), *map(str, files)]) == 2
    assert "lamda_l1" in capsys.readouterr().err


def test_cli_config_files_are_checked_against_the_config_fields(tmp_path, known):
    """python -m stsynth_lib.cgan.train --params ... can check its files the same way (unknown key, type, value)."""
    from stsynth_lib.cgan.config import CGANTrainConfig
    from stsynth_lib.params import validate_config_files

    files = _profile(tmp_path, "lamda_l1: 50\nbatch_size: many\n")
    with pytest.raises(ParamError) as err:
        validate_config_files(CGANTrainConfig, files, known)
    msg = str(err.value)
    assert "unknown key 'lamda_l1' (CGANTrainConfig takes no such option" in msg and "Did you mean 'lambda_l1'" in msg
    assert "batch_size: 'many' -- expected an integer" in msg
    ok = validate_config_files(CGANTrainConfig, _profile(tmp_path, "lambda_l1: 10\n"), known)
    assert ok.params["lambda_l1"] == 10.0 and "synthetic_data" not in ok.params
    # a key of chapter 3's own cell that the trainer does not take (nomask_twin) is dropped, not refused
    ok = validate_config_files(CGANTrainConfig, _profile(tmp_path, "nomask_twin: pix2pix_nomask\n"), known)
    assert "nomask_twin" not in ok.params and ok.dropped["nomask_twin"].endswith("03_train_cgan.yaml")


def test_strength_sweep_settings_are_checked_before_training(tmp_path, known):
    """A bad img2img grid used to fail only in chapter 5's sweep, after the ControlNet had trained."""
    nb05 = PROJECT_ROOT / "notebooks" / "05_controlnet.py"
    common = yaml.safe_load((PROJECT_ROOT / "params" / "smoke" / "common.yaml").read_text())
    (tmp_path / "common.yaml").write_text(yaml.safe_dump(common))
    for bad, expect in (("img2img_strengths: 0.5\n", "expected a list"),
                        ("img2img_strengths: [0.0, 0.5]\n", "strengths in (0, 1]"),
                        ("strength_criterion: fid\n", "one of 'psnr', 'ssim', 'lpips'")):
        (tmp_path / "05_controlnet.yaml").write_text(bad)
        with pytest.raises(ParamError) as err:
            validate_params(nb05, [tmp_path / "common.yaml", tmp_path / "05_controlnet.yaml"], known)
        assert expect in str(err.value), str(err.value)
    (tmp_path / "05_controlnet.yaml").write_text("img2img_strengths: [0.3, 1.0]\nstrength_criterion: lpips\n")
    validate_params(nb05, [tmp_path / "common.yaml", tmp_path / "05_controlnet.yaml"], known)


def test_params_check_refuses_a_twin_change_it_cannot_apply(tmp_path, capsys):
    """Chapter 4's twin_changes are checked with the parameter files: an unknown option or a bad value is named."""
    from stsynth_lib.params import main as params_main

    bad = tmp_path / "04.yaml"
    bad.write_text("model: attention_unet\ntwin_changes:\n  linear_centr: none\n")
    common = "params/smoke/common.yaml"
    assert params_main(["check", "--notebook", "notebooks/04_train_attention_cgan.py", common, str(bad)]) == 2
    err = capsys.readouterr().err
    assert "twin_changes" in err and "profile is not set" not in err
    good = tmp_path / "04ok.yaml"
    good.write_text("model: attention_unet\ntwin_changes:\n  linear_centre: none\n")
    assert params_main(["check", "--notebook", "notebooks/04_train_attention_cgan.py", common, str(good)]) == 0
