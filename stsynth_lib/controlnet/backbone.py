"""The frozen Stable Diffusion backbone: a pretrained SD 1.x (hub id or local folder), or a tiny random one.

``load_backbone("runwayml/stable-diffusion-v1-5")`` loads the tokenizer, text
encoder, VAE, UNet and noise scheduler the way diffusers' ControlNet training
example does. Offline, a missing backbone raises :class:`BackboneNotFoundError`
naming the id and the local-folder alternative.

``build_tiny_sd()`` makes a tiny Stable Diffusion with random weights (UNet,
VAE with the SD downsampling factor of 8, CLIP text encoder) and the *real*
CLIP tokenizer, for smoke runs, tests and CPU benchmarks. Its images are not
meaningful: everything it produces is labelled ``tiny-random``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stsynth_lib.controlnet.tokenizer import (
    TokenizerCheckError,
    build_clip_tokenizer,
    check_tokenizer,
)

DEFAULT_PRETRAINED_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_BACKBONE = "tiny-random"
_MARKER = "stsynth_backbone.json"

# SD 1.5's training noise schedule (scheduler/scheduler_config.json of the public checkpoint).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1, prediction_type="epsilon",
)


class BackboneNotFoundError(OSError):
    """The pretrained Stable Diffusion could not be loaded (offline, wrong id, incomplete folder)."""


@dataclass
class Backbone:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    name: str                 # hub id, local path, or "tiny-random"
    kind: str                 # "pretrained", "tiny-random", or a stage-1 kind ("tiny-trained", "pretrained-adapted")
    description: str = ""     # what tables print: e.g. "tiny, trained from scratch on the sn7_real_128 train split"

    def __post_init__(self):
        if not self.description:
            self.description = describe_backbone(self.kind, self.name)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> "Backbone":
        for m in (self.text_encoder, self.vae, self.unet):
            m.requires_grad_(False)
            m.eval()
        return self

    def to(self, device, dtype=None, vae_dtype=torch.float32) -> "Backbone":
        """Move the frozen parts; the VAE stays fp32 by default (fp16 VAEs give NaN/black images)."""
        for m, dt in ((self.text_encoder, dtype), (self.unet, dtype), (self.vae, vae_dtype)):
            if dt is None or next(m.parameters()).dtype == dt:
                m.to(device)
            else:
                m.to(device, dtype=dt)
        return self


def describe_backbone(kind: str, name: str) -> str:
    """The label tables print for a backbone that records no description of its own (one mapping:
    :func:`stsynth_lib.book.report_format.backbone_label`)."""
    from stsynth_lib.book.report_format import backbone_label

    return backbone_label({"backbone": kind, "backbone_name": name})


def load_backbone(
    pretrained_model: str,
    revision: str | None = None,
    variant: str | None = None,
    local_files_only: bool | None = None,
) -> Backbone:
    """Load SD's tokenizer, text encoder, VAE, UNet and DDPM noise scheduler from a hub id or a local folder.

    ``pretrained_model="tiny-random"`` builds the tiny random backbone instead
    (see :func:`build_tiny_sd`). A folder written by :func:`save_backbone` is
    loaded with its recorded kind (so a tiny backbone stays labelled tiny).
    """
    if pretrained_model == TINY_BACKBONE:
        return build_tiny_sd()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    name = str(pretrained_model)
    p = Path(name).expanduser()
    is_local = p.exists()
    if not is_local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise BackboneNotFoundError(
            f"pretrained_model={name!r}: no such folder. Give a Hugging Face id such as {DEFAULT_PRETRAINED_MODEL!r} "
            "or the path of a local Stable Diffusion 1.x copy (a diffusers folder with tokenizer/, text_encoder/, "
            "vae/, unet/, scheduler/)."
        )
    hint = (
        "Without internet access (or without the weights in the Hugging Face cache), download it once on a "
        f"connected machine, e.g. `hf download {name if not is_local else DEFAULT_PRETRAINED_MODEL} "
        "--local-dir /path/to/local/sd15`, then pass `--pretrained_model /path/to/local/sd15` (notebook "
        "parameter pretrained_model). For a CPU smoke run without any weights use pretrained_model: tiny-random."
    )
    if is_local:
        src = p
    else:
        src = _fetch_snapshot(name, revision, variant, local_files_only, hint)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", local_files_only=True)
        check_tokenizer(tokenizer, source=f"tokenizer of {src}")
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", variant=variant, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=variant, local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", variant=variant, local_files_only=True)
        noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", local_files_only=True)
    except TokenizerCheckError:
        raise
    except Exception as e:  # missing/corrupt files
        where = f"the local folder {src}" if is_local else f"the downloaded snapshot of {name!r} at {src}"
        raise BackboneNotFoundError(
            f"Could not load the Stable Diffusion backbone from {where} ({type(e).__name__}: {str(e)[:300]}). "
            "The folder must hold tokenizer/, text_encoder/, vae/, unet/ and scheduler/ in diffusers format. " + hint
        ) from e
    kind, description = "pretrained", ""
    if is_local and (p / _MARKER).is_file():
        marker = json.loads((p / _MARKER).read_text())
        kind, description = marker.get("backbone", kind), marker.get("description", "")
    return Backbone(tokenizer, text_encoder, vae, unet, noise_scheduler, name=name, kind=kind, description=description)


def _fetch_snapshot(repo_id: str, revision, variant, local_files_only, hint: str) -> Path:
    """The local snapshot of the backbone's weights: from the HF cache, else downloaded (safetensors only)."""
    from huggingface_hub import snapshot_download

    v = f".{variant}" if variant else ""
    patterns = [
        "model_index.json", "scheduler/*.json", "tokenizer/*",
        "text_encoder/config.json", f"text_encoder/model{v}.safetensors",
        "vae/config.json", f"vae/diffusion_pytorch_model{v}.safetensors",
        "unet/config.json", f"unet/diffusion_pytorch_model{v}.safetensors",
    ]
    try:  # already cached: no network at all
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception as cached_err:
        if local_files_only:
            raise BackboneNotFoundError(
                f"Stable Diffusion backbone {repo_id!r} is not in the Hugging Face cache and local_files_only is set "
                f"({type(cached_err).__name__}). " + hint
            ) from cached_err
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise BackboneNotFoundError(
            f"Could not download the Stable Diffusion backbone {repo_id!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e)[:300]}). " + hint
        ) from e


def tiny_sd_configs(cross_attention_dim: int = 32) -> dict[str, dict[str, Any]]:
    """Small configs for the tiny random SD: VAE downsampling factor 8 like SD, two UNet levels."""
    return {
        "text_encoder": dict(
            vocab_size=49408, hidden_size=cross_attention_dim, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=cross_attention_dim,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(8, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        "unet": dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
        ),
    }


def build_tiny_sd(seed: int = 0, tokenizer_cache_dir: str | os.PathLike | None = None) -> Backbone:
    """A tiny Stable Diffusion with random weights and the real CLIP tokenizer (deterministic for a seed).

    Works at any tile size divisible by 16 (latent = tile / 8, one UNet
    downsampling), e.g. 32, 64, 128 px. The VAE's latent scaling factor is set
    to 1 / std of its latents on a fixed random batch, as SD's 0.18215 was.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = tiny_sd_configs()
    tokenizer = build_clip_tokenizer(tokenizer_cache_dir)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        vae = AutoencoderKL(**cfg["vae"])
        unet = UNet2DConditionModel(**cfg["unet"])
        with torch.no_grad():
            x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
            std = float(vae.encode(x).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    finally:
        torch.random.set_rng_state(gen_state)
    noise_scheduler = DDPMScheduler(**SD15_SCHEDULER)
    return Backbone(tokenizer, text_encoder, vae, unet, noise_scheduler, name=TINY_BACKBONE, kind=TINY_BACKBONE)


def save_backbone(backbone: Backbone, out_dir: str | os.PathLike, description: str | None = None,
                  unet_target: str | None = None) -> Path:
    """Write the backbone as a diffusers folder (loadable with :func:`load_backbone`), with its kind and
    description recorded (``stsynth_backbone.json``; and, for a stage-1 backbone, what its UNet learned:
    ``unet_target``, :func:`stsynth_lib.controlnet.residual.backbone_unet_target`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone.tokenizer.save_pretrained(out / "tokenizer")
    backbone.text_encoder.save_pretrained(out / "text_encoder")
    backbone.vae.save_pretrained(out / "vae")
    backbone.unet.save_pretrained(out / "unet")
    backbone.noise_scheduler.save_pretrained(out / "scheduler")
    from stsynth_lib.runs import atomic_write_text

    marker = {"backbone": backbone.kind, "source": backbone.name, "description": description or backbone.description}
    if unet_target is not None:
        marker["unet_target"] = unet_target
    atomic_write_text(out / _MARKER, json.dumps(marker))
    return out


def sd15_configs() -> dict[str, dict[str, Any]]:
    """The architecture of Stable Diffusion 1.5 (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder 123 M)."""
    return {
        "text_encoder": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                             hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215),
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    }


def build_random_sd15(seed: int = 0, tokenizer_cache_dir: str | os.PathLike | None = None) -> Backbone:
    """Stable Diffusion 1.5's architecture with random weights: for speed and memory benchmarks only
    (same FLOPs and memory as the real model; labelled ``sd15-architecture-random``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_configs()
    tokenizer = build_clip_tokenizer(tokenizer_cache_dir)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        vae = AutoencoderKL(**cfg["vae"])
        unet = UNet2DConditionModel(**cfg["unet"])
    finally:
        torch.random.set_rng_state(state)
    return Backbone(tokenizer, text_encoder, vae, unet, DDPMScheduler(**SD15_SCHEDULER),
                    name="sd15-architecture-random", kind="sd15-architecture-random")


@torch.no_grad()
def image_latents(backbone: Backbone, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Scaled VAE latents (posterior mean, fp32) of images ``(B, C, H, W)`` in [-1, 1]: the first channels the VAE
    takes, resized to ``size`` (the generation resolution) when given."""
    vae = backbone.vae
    x = images[:, : vae.config.in_channels].float()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        lat = vae.encode(x.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return lat.float()
