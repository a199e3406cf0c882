"""ControlNet on Stable Diffusion (diffusers): backbone, conditioning, training, generation.

* :mod:`~stsynth_lib.controlnet.tokenizer`: the real CLIP tokenizer offline + ``check_tokenizer`` guard,
* :mod:`~stsynth_lib.controlnet.backbone`: ``load_backbone`` (hub id / local folder) and ``build_tiny_sd``,
* :mod:`~stsynth_lib.controlnet.conditioning`: past + future mask (+ gap) conditioning, metadata prompts,
* :mod:`~stsynth_lib.controlnet.train`: ``ControlNetTrainConfig``, ``train_controlnet`` (also ``python -m``),
* :mod:`~stsynth_lib.controlnet.generate`: ``sample_images``, ``ControlNetPredictor``, ``generate_split``.

Importing this package does not import diffusers; the submodules do.
"""
