"""The ControlNet's no-mask twin (issue 32): one factor changed, the footprint channel; the rest as the guided run."""

from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread", "stsynth_cache_in_tmp")


def _cfg(dataset_dir, runs_dir, **kw):
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    base = dict(dataset_dir=str(dataset_dir), runs_dir=str(runs_dir), profile="test", max_train_steps=2,
                train_batch_size=2, learning_rate=1e-3, validation_steps=0, validate_at_start=False,
                checkpointing_steps=0, log_every_steps=1, max_train_pairs=8, progress=False, cond_gain_pairs=4)
    base.update(kw)
    return ControlNetTrainConfig(**{k: v for k, v in base.items() if k != "cond_gain_pairs"})


def test_a_twin_may_erase_without_the_mask_and_needs_it_off():
    from stsynth_lib.controlnet.config import ControlNetTrainConfig

    with pytest.raises(ValueError, match="use_mask"):
        ControlNetTrainConfig(erase_building_fraction=0.3, use_mask=False)
    twin = ControlNetTrainConfig(erase_building_fraction=0.3, use_mask=False, nomask_twin_of="controlnet")
    assert twin.nomask_twin_of == "controlnet"
    with pytest.raises(ValueError, match="needs use_mask: false"):
        ControlNetTrainConfig(use_mask="auto", nomask_twin_of="controlnet")


def test_twin_trains_without_footprints_and_generates_at_the_guided_strength(tiny_dataset_dir, tmp_path):
    from stsynth_lib.controlnet.generate import generate_split
    from stsynth_lib.controlnet.train import train_controlnet
    from stsynth_lib.controlnet.twin import nomask_twin_config, train_nomask_twin, twin_comparison

    cfg = _cfg(tiny_dataset_dir, tmp_path, erase_building_fraction=0.5)
    guided = train_controlnet(cfg)
    gen = dict(num_inference_steps=2, seed=0, batch_size=4, strength=0.5, max_pairs=6, subsample_seed=0,
               progress=False, device="cpu")
    guided_pred = generate_split(guided, tiny_dataset_dir, "test", **gen)
    with pytest.raises(ValueError, match="overwrite"):
        nomask_twin_config(cfg, guided, guided.name)
    twin_pred = train_nomask_twin(cfg, guided, "controlnet_nomask", gen)
    twin_dir = twin_pred.parent.parent
    recorded = yaml.safe_load((twin_dir / "params.yaml").read_text())
    assert twin_dir.name == "controlnet_nomask" and twin_dir.parent == guided.parent
    assert recorded["use_mask"] is False and recorded["nomask_twin_of"] == guided.name
    assert recorded["erase_building_fraction"] == 0.5 and recorded["conditioning_channels"] == \
        yaml.safe_load((guided / "params.yaml").read_text())["conditioning_channels"] - 1  # the mask channel, only
    sampling = yaml.safe_load((twin_pred / "sampling.yaml").read_text())
    assert sampling["strength"] == 0.5 and sampling["seed"] == 0
    scores, gain = twin_comparison(tiny_dataset_dir, guided_pred, twin_pred, max_pairs=6, seed=0, n_boot=50)
    assert list(scores.index)[1:] == ["ControlNet (tiny, random)", "ControlNet, no mask (tiny, random)"]
    assert set(gain.index if "model" not in gain else gain["model"]) == {"ControlNet (tiny, random)"}
    assert len(gain) > 0
    # a twin of the twin would be the same run
    with pytest.raises(ValueError, match="reads no footprints"):
        nomask_twin_config(cfg, twin_dir, "again")
