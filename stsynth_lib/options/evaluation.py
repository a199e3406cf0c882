"""Options of the evaluation chapters (6 and 7) and the test-split predictions of the training chapters."""

from stsynth_lib.options.core import Concern, Option

EVALUATION = Concern("evaluation", "Evaluation", (
    Option("split", str, "test", "the split scored", choices=("train", "val", "test")),
    Option("models", list, ["pix2pix", "attention_unet", "controlnet"], "the run folders scored, by name", item=str),
    Option("baselines", list, ["mean_last_3", "seasonal"], "simple past-only predictors scored next to persistence "
           "(no learning)", item=str),
    Option("max_test_pairs", int, None, "a seeded subset of the test pairs predicted; null: the whole split",
           none_ok=True, min=1),
    Option("nomask_twin", str, None, "the run name of this run's no-mask control, trained after it with the same "
           "options but use_mask and use_past_mask false (what the footprints add: chapter 6, twins); null: none",
           none_ok=True),
    Option("twins", dict, {}, "guided model -> its no-mask twin (run folders), scored beside it and tabled as model "
           "minus twin on new-building pixels, new buildings drawn and the whole image", test=lambda d: all(
               isinstance(k, str) and isinstance(v, str) for k, v in d.items()),
           words="a mapping of run names to run names"),
    Option("judge_results", str, None, "the building judge study's results file (experiments/segmenter) tabled in "
           "chapter 6 beside the bar; null: none", none_ok=True),
    Option("kfold_results", str, None, "a k-fold results file (experiments/guidance_kfold) tabled in chapter 6; null: "
           "none", none_ok=True),
    Option("max_eval_pairs", int, None, "null: every pair of the split; an int: a seeded subset, the same for every "
           "model", none_ok=True, min=1),
    Option("segmenter_steps", int, 300, "building-segmenter training steps", min=1),
    Option("segmenter_batch_size", int, 16, "segmenter pairs per step (both dates used: 2x images)", min=1),
    Option("segmenter_base_channels", int, 16, "segmenter width", min=1),
    Option("segmenter_depth", int, 3, "segmenter levels", min=1),
    Option("segmenter_lr", float, 1e-3, "segmenter learning rate", min=0, min_open=True),
    Option("segmenter_upsample", int, 1, "segmenter input upsampling (buildings a few pixels wide get more pixels)",
           min=1),
    Option("segmenter_crop_px", int, None, "segmenter training crops (px); null: whole tiles", none_ok=True, min=8),
    Option("segmenter_sample_by", str, "pairs", "segmenter training images: both dates of each pair, or every "
           "labelled tile once per epoch", choices=("pairs", "tiles")),
    Option("segmenter_decision_threshold", float, 0.5, "building probability above which the judge calls a pixel "
           "building (chosen on validation: experiments/segmenter)", min=0, min_open=True, max=1, max_open=True),
    Option("retrain_segmenter", bool, False, "false: reuse runs/<profile>/segmenter/segmenter.pt when it exists"),
    Option("gallery_metric", str, "lpips", "the metric that ranks the best / median / worst tiles"),
    Option("fid_max_pairs", int, 64, "null: every pair; an int: a seeded subset, the same for every model",
           none_ok=True, min=1),
    Option("fid_batch_size", int, 32, "images per Inception batch", min=1),
    Option("min_bucket_pairs", int, 10, "no per-gap FID for buckets with fewer pairs", min=1),
    Option("kid_subset_size", int, 1000, "KID subsets of min(this, n) tiles", min=1),
    Option("kid_subsets", int, 100, "KID subsets drawn", min=1),
))
