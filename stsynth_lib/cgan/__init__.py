"""The pix2pix and attention-U-Net cGANs: config, losses, training loop, calibration, plots.

Import the submodules (``stsynth_lib.cgan.train``, ``.model_io``, ...); this package imports nothing eagerly."""
