"""Rebuild a trained generator from its run folder (``model.yaml`` + weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
import yaml
from torch import nn

from stsynth_lib.conditioning import GuidanceConfig
from stsynth_lib.models.registry import build_generator
from stsynth_lib.runs import latest_checkpoint

if TYPE_CHECKING:  # the config belongs to the trainer; this module only reads its fields
    from stsynth_lib.cgan.config import CGANTrainConfig


def model_spec(cfg: "CGANTrainConfig", guidance: GuidanceConfig, n_bands: int, tile_size_px: int) -> dict[str, Any]:
    """Everything needed to rebuild the generator (written to ``model.yaml``)."""
    channels = guidance.channel_names()
    return {
        "name": cfg.model,
        "in_channels": guidance.n_channels,
        "out_channels": n_bands,
        "tile_size_px": tile_size_px,
        "ngf": cfg.ngf,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "residual": bool(cfg.residual),
        "gap_channel": channels.index("gap_months_scaled") if "gap_months_scaled" in channels else None,
        "guidance": guidance.to_dict(),
        "channels": channels,
        # attention over the past frames (stsynth_lib.models.temporal); absent = channel stacking (older runs)
        **({"temporal_fusion": cfg.temporal_fusion} if cfg.temporal_fusion != "concat" else {}),
        **({"centre_inputs": True} if cfg.centre_inputs else {}),  # absent = raw colours (older runs)
    }


def generator_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    return build_generator(spec["name"], spec["in_channels"], spec["out_channels"], spec["tile_size_px"],
                           ngf=spec["ngf"], norm=spec["norm"], dropout=spec["dropout"],
                           residual=bool(spec.get("residual", False)), gap_channel=spec.get("gap_channel"),
                           gap_scale_months=float(spec.get("guidance", {}).get("gap_scale_months", 24.0)),
                           temporal_fusion=spec.get("temporal_fusion", "concat"), channels=spec.get("channels"),
                           **({"centre_inputs": True} if spec.get("centre_inputs") else {}))



def load_generator(run_dir: str | Path, which: str = "best", map_location: str = "cpu") -> tuple[nn.Module, GuidanceConfig]:
    """Rebuild a run's generator (eval mode) and its :class:`GuidanceConfig`.

    ``which``: ``"best"`` (``best/generator.pt``, the best validation score),
    ``"latest"`` (the newest checkpoint) or a checkpoint folder name.
    """
    run_dir = Path(run_dir)
    spec_path = run_dir / "model.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: {run_dir} is not a cGAN run folder (train it with train_cgan first)")
    spec = yaml.safe_load(spec_path.read_text())
    G = generator_from_spec(spec)
    if which == "best":
        path = run_dir / "best" / "generator.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the run never validated; use which='latest'")
        state = torch.load(path, map_location=map_location, weights_only=True)
    else:
        ck = latest_checkpoint(run_dir) if which == "latest" else run_dir / "checkpoints" / which
        if ck is None or not (Path(ck) / "state.pt").is_file():
            raise FileNotFoundError(f"no checkpoint {which!r} with a state.pt under {run_dir / 'checkpoints'}")
        state = torch.load(Path(ck) / "state.pt", map_location=map_location, weights_only=True)["generator"]
    if getattr(G, "residual", False) and "residual_scale" in dict(G.named_buffers()):  # saved before the calibration buffers
        state = {"residual_scale": torch.ones(()), "residual_full_gap_months": torch.zeros(()), **state}
    G.load_state_dict(state)
    G.eval()
    return G, GuidanceConfig.from_dict(spec["guidance"])

