"""Options of the conditional GANs (chapters 3 and 4): architecture, loss, sampling of batches, optimisation."""

from stsynth_lib.options.core import Concern, Option

CGAN = Concern("cgan", "cGAN", (
    Option("model", str, "pix2pix", "the generator", choices=("pix2pix", "attention_unet")),
    # architecture
    Option("ngf", int, 64, "generator filters at the first level (pix2pix: 64)", min=1),
    Option("ndf", int, 64, "discriminator filters (pix2pix: 64)", min=1),
    Option("norm", str, "instance", "normalisation layers", choices=("instance", "batch", "none")),
    Option("dropout", float, 0.5, "generator dropout", min=0, max=1, max_open=True),
    Option("d_layers", int, 3, "discriminator layers (3: the 70x70 PatchGAN)", min=1),
    Option("residual", bool, False, "not pix2pix: output past image + a tanh change, so training starts at "
           "persistence"),
    Option("temporal_fusion", str, "concat", "context frames: concat (channels) | attention (a learned per-pixel "
           "blend of the frames starts the residual) | tile_reweight (the residual base with per-tile frame weights)",
           choices=("concat", "attention", "tile_reweight")),
    Option("centre_inputs", bool, False, "attention / tile_reweight: the networks see colours relative to the tile's "
           "mean colour (brightness-equivariant)"),
    # loss
    Option("gan_mode", str, "vanilla", "adversarial loss: vanilla (BCE) | lsgan", choices=("vanilla", "lsgan")),
    Option("lambda_l1", float, 100.0, "weight of the L1 loss (0 would leave an unguided GAN; pix2pix: 100)", min=0,
           min_open=True),
    Option("new_building_l1_weight", float, 0.0, ">0: L1 weight 1 + this on new-building pixels (labelled data)",
           min=0),
    Option("change_pair_fraction", float, 0.0, ">0: this share of each batch from pairs with new buildings "
           "(labelled data); 0: plain shuffle", min=0, max=1, max_open=True),
    Option("min_new_building_px", int, 20, "a pair \"has new buildings\" from this many new-building pixels", min=1),
    # optimisation
    Option("lr", float, 2e-4, "Adam learning rate", min=0, min_open=True),
    Option("beta1", float, 0.5, "Adam beta1", min=0, max=1),
    Option("beta2", float, 0.999, "Adam beta2", min=0, max=1),
    Option("batch_size", int, 8, "pairs per optimiser step", min=1),
    Option("epochs_constant", int, 1, "epochs at the full learning rate", min=0),
    Option("epochs_decay", int, 1, "then linear decay to 0 over these epochs", min=0),
    Option("max_steps", int, None, "stop earlier after this many optimiser steps (a checkpoint is written)",
           none_ok=True, min=1),
    Option("radiometric_jitter", float, 0.0, ">0: the same random per-band gain 1+-j and offset +-j on past and "
           "future (training only)", min=0, max=1, max_open=True),
    Option("channels_last", "auto", "auto", "channels-last memory format: auto (on CUDA and with CPU bf16) | true | "
           "false"),
    # bookkeeping
    Option("sample_every_steps", int, 200, "a grid of samples every this many steps; 0: none", min=0),
    Option("n_sample_rows", int, 4, "pairs in each sample grid", min=0),
    Option("checkpoint_every_steps", int, 0, "a checkpoint every this many steps; 0: at the end of each epoch",
           min=0),
    Option("val_every_epochs", int, 1, "validate every this many epochs", min=1),
    Option("val_every_steps", int, 0, ">0: also validate (and update best/) every this many steps", min=0),
    Option("best_metric", str, "val_l1", "the validation score that picks best/",
           choices=("val_l1", "val_psnr", "val_ssim")),
    Option("calibrate_residual_scale", bool, False, "residual models: after training, fit how much change to apply "
           "on the full val split"),
))
