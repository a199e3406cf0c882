"""ControlNet on Stable Diffusion (diffusers): backbone, conditioning, training, generation.

* :mod:`~stsynth_lib.controlnet.tokenizer`: the real CLIP tokenizer offline + ``check_tokenizer`` guard,
* :mod:`~stsynth_lib.controlnet.backbone`: ``load_backbone`` (hub id / local folder) and ``build_tiny_sd``,
* :mod:`~stsynth_lib.controlnet.conditioning`: past [+ past frames] + future mask (+ gap) conditioning, metadata prompts,
* :mod:`~stsynth_lib.controlnet.train`: ``ControlNetTrainConfig``, ``train_controlnet`` (also ``python -m``),
* :mod:`~stsynth_lib.controlnet.generate`: ``sample_images``, ``ControlNetPredictor``, ``generate_split``,
* :mod:`~stsynth_lib.controlnet.residual`: residual diffusion's scale (fitted, recorded in ``residual.yaml``).

What the denoiser learns is the option ``diffusion_target``. ``image`` (the default) is the whole future latent:
on real data the best it can do is redraw the past, and it loses to persistence. ``residual`` is the latent change
from the past image, ``r = (z_future - z_past) * residual_scale`` (``z_past`` the VAE posterior mean of the past
image; the scale ``1 / RMS`` of that change, fitted on ``residual_scale_pairs`` training pairs when a run starts and
kept in ``<run>/residual.yaml``); generation decodes ``z_past + r / residual_scale``, so a sampled residual of 0 is
exactly the past through the VAE (the autoencoder's ceiling) and "nothing changed" is the easy answer. An img2img
strength < 1 starts a residual run from ``r = 0`` noised part of the way. Several samples per pair
(``num_samples_per_pair``) average into a predictions folder of their own with
:func:`stsynth_lib.predict.split.write_sample_mean`, which the evaluation scores as another row.

Importing this package does not import diffusers; the submodules do.
"""
