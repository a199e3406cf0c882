"""Options of generating with the ControlNet (chapter 5's test split): sampler, guidance, img2img strength."""

from stsynth_lib.options.core import Concern, Option

SCHEDULERS = ("unipc", "ddim", "dpmsolver++", "euler", "ddpm")
# how a residual run turns its sampled latent change into an image (controlnet.generate.sample_images): through the
# autoencoder whole ("latent"), or as the past image plus the decoded change ("difference")
RESIDUAL_DECODES = ("latent", "difference")

SAMPLING = Concern("sampling", "Sampling", (
    Option("scheduler", str, "unipc", "the sampler", choices=SCHEDULERS),
    Option("num_inference_steps", int, 20, "sampling steps", min=1),
    Option("guidance_scale", float, 1.0, "> 1: classifier-free guidance against the empty prompt", min=0),
    Option("controlnet_conditioning_scale", float, 1.0, "weight of the ControlNet's residuals", min=0),
    Option("residual_decode", str, "latent", "a residual run's image: latent (decode the past's latent plus the "
           "sampled change) or difference (the past image plus the decoded change: no change is the past exactly)",
           choices=RESIDUAL_DECODES),
    Option("generation_batch_size", int, 16, "pairs per generation batch", min=1),
    Option("img2img_strengths", list, None, "null: pure noise (strength 1); a grid, e.g. [0.2, 0.4, 0.6, 0.8, 1.0]: "
           "choose the img2img strength (start from the noised past image) on validation pairs", none_ok=True,
           item=float, test=lambda v: len(v) > 0 and all(0 < float(x) <= 1 for x in v),
           words="a non-empty list of strengths in (0, 1]"),
    Option("strength_sweep_pairs", int, 256, "validation pairs of that sweep (a seeded shuffle of the val split)",
           min=1),
    Option("strength_criterion", str, "psnr", "the validation score that picks the strength; f1_new (labelled "
           "data): the building segmenter's F1 on new buildings", choices=("psnr", "ssim", "lpips", "f1_new")),
    Option("strength_psnr_floor_db", float, None, "only strengths whose validation PSNR is at least persistence's "
           "plus this many dB compete (0: never trade the whole image's PSNR against persistence for the criterion); "
           "null: every strength", none_ok=True),
    Option("compare_prompt_only", bool, True, "also draw the test pairs from the prompt alone (backbone without "
           "ControlNet)"),
    Option("num_samples_per_pair", int, 4, "samples drawn for the spread figure (and, with test_sample_mean, for "
           "every test pair)", min=1),
    Option("test_sample_mean", bool, False, "draw num_samples_per_pair samples of every test pair and write their "
           "per-pixel mean (<run>/predictions/test_sample_mean; chapter 6 scores it as the model "
           "<run name>_sample_mean)"),
    Option("n_spread_pairs", int, 4, "test pairs of the spread figure", min=1),
))
