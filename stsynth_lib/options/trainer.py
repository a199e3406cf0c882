"""Options both trainers (cGAN and ControlNet) take: data subsets, augmentation, precision, bookkeeping."""

from stsynth_lib.options.core import Concern, Option

TRAINER = Concern("trainer", "Training (both trainers)", (
    Option("num_workers", int, 0, "DataLoader worker processes", min=0),
    Option("max_train_pairs", int, None, "a seeded subset of the training pairs; null: every pair", none_ok=True,
           min=1),
    Option("max_val_pairs", int, None, "a seeded subset of the validation pairs; null: every pair", none_ok=True,
           min=1),
    Option("augment", bool, True, "random flips / 90-degree rotations of training pairs"),
    Option("erase_building_fraction", float, 0.0, "synthetic construction (labelled data): erase each building "
           "standing at both dates from the past image with this probability", min=0, max=1),
    Option("mixed_precision", str, "auto", "auto (bf16 where the hardware has it, else fp16 on CUDA / fp32 on CPU) "
           "| no | bf16 | fp16", choices=("auto", "no", "bf16", "fp16")),
    Option("log_every_steps", int, 10, "a line of the training log every this many steps", min=1),
    Option("checkpoints_total_limit", int, 2, "keep the newest n checkpoints; null keeps all", none_ok=True, min=1),
    Option("resume_from_checkpoint", str, None, "null or \"\": fresh run (the previous one is kept until it "
           "succeeds) | latest | checkpoint-<step>", none_ok=True),
    Option("allow_resume_changes", bool, False, "resume even if options differ from the saved run"),
))
