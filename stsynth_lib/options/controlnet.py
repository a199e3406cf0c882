"""Options of the ControlNet (chapter 5, stage 2): backbone, conditioning and prompts, optimisation, validation."""

from stsynth_lib.options.core import Concern, Option

CONTROLNET = Concern("controlnet", "ControlNet", (
    # backbone
    Option("pretrained_model", str, "tiny-random", "the backbone: tiny-random | tiny-from-scratch (stage 1 trains "
           "it; chapter 5 only) | a hub id (stable-diffusion-v1-5/stable-diffusion-v1-5) | a local folder"),
    Option("revision", str, None, "hub revision of the backbone", none_ok=True),
    Option("variant", str, None, "weights file variant on the hub, e.g. fp16", none_ok=True),
    Option("tiny_seed", int, 0, "weights of the tiny-random backbone"),
    Option("resolution_px", int, None, "null: the tile size; 512 for SD 1.5 on smaller tiles (resized, outputs "
           "resized back)", none_ok=True, min=1),
    # conditioning and prompts
    Option("use_gap_plane", bool, True, "add gap_months / gap_scale_months as a constant channel"),
    Option("prompt_template", str, "satellite image, {month_name} {year}, {gap_months} months later, "
           "{n_new_buildings} new buildings", "the prompt built from each pair's metadata"),
    Option("empty_prompt", bool, False, "train and generate with \"\" (image conditioning only)"),
    Option("prompt_dropout", float, 0.5, "share of training prompts replaced by \"\" (ControlNet paper: 0.5)", min=0,
           max=1),
    # what the denoiser learns
    Option("diffusion_target", str, "image", "image: the whole future latent | residual: the latent change from the "
           "past image's latent, times residual_scale (generation adds it back to the past's latent, so a residual "
           "of 0 is the past through the VAE, or the past itself with residual_decode: difference); beside a stage-1 "
           "backbone it must be stage 1's unet_target",
           choices=("image", "residual")),
    Option("residual_scale_pairs", int, 64, "residual only: seeded training pairs whose latent change fits "
           "residual_scale = 1 / RMS (recorded in the run folder's residual.yaml, kept on resume; beside a stage-1 "
           "backbone trained with unet_target: residual, the backbone's scale is taken instead)", min=1),
    Option("nomask_twin_of", str, None, "set by chapter 5's nomask_twin on the twin it trains: the guided run this "
           "one is the no-mask control of (use_mask false; erase_building_fraction kept, so both see the same "
           "training pairs)", none_ok=True),
    # optimisation
    Option("max_train_steps", int, 200, "optimiser steps", min=1),
    Option("train_batch_size", int, 4, "pairs per step", min=1),
    Option("gradient_accumulation_steps", int, 1, "batches per optimiser step", min=1),
    Option("learning_rate", float, 1e-5, "diffusers' example: 1e-5 for SD 1.5; the tiny backbones take more", min=0,
           min_open=True),
    Option("zero_conv_lr_mult", float, 1.0, "learning-rate multiplier of the zero convolutions (diffusers: 1)",
           min=0),
    Option("cond_embedding_init", str, "default", "default (diffusers) | kaiming: He init of the conditioning "
           "encoder", choices=("default", "kaiming")),
    Option("lr_scheduler", str, "constant", "any diffusers.optimization scheduler name"),
    Option("lr_warmup_steps", int, 0, "learning-rate warm-up steps", min=0),
    Option("adam_beta1", float, 0.9, "Adam beta1", min=0, max=1),
    Option("adam_beta2", float, 0.999, "Adam beta2", min=0, max=1),
    Option("adam_weight_decay", float, 1e-2, "Adam weight decay", min=0),
    Option("adam_epsilon", float, 1e-8, "Adam epsilon", min=0, min_open=True),
    Option("max_grad_norm", float, 1.0, "gradient clipping norm", min=0, min_open=True),
    Option("use_8bit_adam", "auto", "auto", "auto (when bitsandbytes is installed and a GPU is used) | true | false"),
    Option("gradient_checkpointing", bool, False, "recompute activations in the backward pass (less memory)"),
    Option("sdpa", bool, True, "torch scaled_dot_product_attention processors"),
    # bookkeeping and validation
    Option("checkpointing_steps", int, 100, "a checkpoint every this many steps; 0: at the end only", min=0),
    Option("validation_steps", int, 100, "validate every this many steps; 0: never", min=0),
    Option("validate_at_start", bool, True, "also validate before the first step"),
    Option("num_validation_images", int, 4, "pairs drawn in the validation grids", min=0),
    Option("num_validation_loss_pairs", int, 16, "pairs of the validation losses / control_gain / cond_gain", min=0),
    Option("validation_batch_size", int, 2, "pairs per validation batch", min=1),
    Option("validation_scheduler", str, "unipc", "sampler of the validation grids",
           choices=("unipc", "ddim", "dpmsolver++", "euler", "ddpm")),
    Option("validation_inference_steps", int, 20, "sampling steps of the validation grids", min=1),
    Option("validation_guidance_scale", float, 1.0, "classifier-free guidance of the validation grids", min=0),
    Option("cond_gain_pairs", int, 256, "validation pairs of the end-of-training cond_gain / control_gain estimate",
           min=1),
))
