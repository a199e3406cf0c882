"""Stage-1 autoencoder candidates for the tiny diffusion backbone (issue 33): how high is the reconstruction
ceiling of each, on real SpaceNet 7 tiles, next to what persistence scores?

Every diffusion output is decoded by the stage-1 VAE, so its reconstruction PSNR / SSIM of the *future* images is an
upper bound on the diffusion model's scores. Each candidate is trained with the library's own phase
(:func:`stsynth_lib.controlnet.adapt.train_vae`, the options of :class:`BackboneAdaptConfig`) on the train split's
tile images and compared on the VALIDATION split (every tile image, valid pixels); the TEST split is scored only
with ``--test`` for the candidate chosen on validation. On the split's pairs, the VAE's reconstruction of each future
image is scored next to persistence (the past image as the prediction) on the same pixels
(:func:`stsynth_lib.controlnet.ceiling.ceiling_vs_persistence`): the bar a diffusion model must be able to clear. A
candidate already trained (its ``vae/final`` under ``--runs-dir``) is only scored again.

    python experiments/autoencoder_ceiling/compare_autoencoders.py --dataset-dir data/sn7_real_128/dataset --only f2_l8
    python experiments/autoencoder_ceiling/compare_autoencoders.py --write-readme

Results go to ``--out`` (JSON, one entry per candidate, merged with what is there); ``--write-readme`` regenerates
the table of this folder's README from that file. Run candidates one at a time (``--only``) to keep each job short.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
# name -> BackboneAdaptConfig options of the VAE phase. "f4_l16" is the sn7_real_128 profile's stage 1 today.
CANDIDATES: dict[str, dict] = {
    "f4_l16": {"vae_channels": [16, 32, 64], "latent_channels": 16, "vae_steps": 1500},
    "f4_l16_wide": {"vae_channels": [32, 64, 128], "latent_channels": 16, "vae_steps": 1500},
    "f2_l4": {"vae_channels": [32, 64], "latent_channels": 4, "vae_steps": 1500},
    "f2_l8": {"vae_channels": [32, 64], "latent_channels": 8, "vae_steps": 1500},
    "f2_l8_long": {"vae_channels": [32, 64], "latent_channels": 8, "vae_steps": 4000},
}
COLUMNS = ("factor", "latent_values_per_pixel", "vae_params_m", "train_min", "val_psnr_db", "val_ssim",
           "val_pairs_ceiling_psnr_db", "val_pairs_ceiling_ssim")


def run_candidate(name: str, dataset_dir: str, runs_dir: Path, test: bool, seed: int, previous: dict) -> dict:
    import torch

    from stsynth_lib.controlnet.adapt import BackboneAdaptConfig, train_vae
    from stsynth_lib.controlnet.adapt_parts import vae_reconstruction_scores
    from stsynth_lib.controlnet.ceiling import ceiling_vs_persistence

    opts = CANDIDATES[name]
    cfg = BackboneAdaptConfig(dataset_dir=dataset_dir, runs_dir=str(runs_dir), profile="ae", run_name=name,
                              seed=seed, device="cpu", max_val_tiles=64, validation_steps=500, checkpointing_steps=500,
                              resume_from_checkpoint="latest", progress=False, **opts)
    run_dir = runs_dir / "ae" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = (run_dir / "vae" / "final" / "config.json").is_file()
    t = time.perf_counter()
    vae = train_vae(cfg, run_dir, torch.device("cpu"))  # a trained candidate is loaded, not trained again
    minutes = previous.get("train_min") if trained else (time.perf_counter() - t) / 60
    out = {"options": opts, "factor": 2 ** (len(opts["vae_channels"]) - 1),
           "latent_values_per_pixel": opts["latent_channels"] / 4 ** (len(opts["vae_channels"]) - 1) / 3,
           "vae_params_m": sum(p.numel() for p in vae.parameters()) / 1e6, "train_min": minutes}
    for split in ("val", "test") if test else ("val",):
        tiles = vae_reconstruction_scores(vae, dataset_dir, split)
        pairs = ceiling_vs_persistence(vae, dataset_dir, split)
        out.update({f"{split}_psnr_db": tiles["psnr_db"], f"{split}_ssim": tiles["ssim"], f"{split}_tiles": tiles["n_tiles"],
                    f"{split}_pairs_ceiling_psnr_db": pairs.iloc[0]["psnr_db"],
                    f"{split}_pairs_ceiling_ssim": pairs.iloc[0]["ssim"],
                    f"{split}_pairs": int(pairs.iloc[0]["pairs"]),
                    f"{split}_pairs_persistence_psnr_db": pairs.loc["persistence", "psnr_db"],
                    f"{split}_pairs_persistence_ssim": pairs.loc["persistence", "ssim"]})
    return out


def write_readme(results: dict, readme: Path) -> None:
    """Regenerate the table between the README's markers from the results file."""
    head = "| candidate | " + " | ".join(COLUMNS) + " | test_psnr_db | test_ssim |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, r in results.get("candidates", {}).items():
        cells = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in COLUMNS]
        cells += [f"{r[c]:.4g}" if c in r else "(not scored)" for c in ("test_psnr_db", "test_ssim")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    scored = [r for r in results.get("candidates", {}).values() if "val_pairs_persistence_psnr_db" in r]
    if scored:
        r = scored[0]
        rows.append(f"| persistence (the bar, on the same pairs) | | | | | | | {r['val_pairs_persistence_psnr_db']:.4g} | "
                    f"{r['val_pairs_persistence_ssim']:.4g} | "
                    + next((f"{x['test_pairs_persistence_psnr_db']:.4g} (pairs) | {x['test_pairs_persistence_ssim']:.4g} |"
                            for x in results["candidates"].values() if "test_pairs_persistence_psnr_db" in x), " | |"))
    text = readme.read_text()
    start, end = "<!-- table:start -->", "<!-- table:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    readme.write_text(text[:a] + "\n" + "\n".join(rows) + "\n" + text[b:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset-dir", default="data/sn7_real_128/dataset", help="tile store of chapter 2")
    p.add_argument("--runs-dir", default="runs/experiments", help="where the candidates' VAEs are saved")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="candidates to train (default: all)")
    p.add_argument("--test", action="store_true", help="also score the TEST split (the chosen candidate, once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", default=str(HERE / "results" / "autoencoders.json"))
    p.add_argument("--write-readme", action="store_true", help="only regenerate README.md's table from --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.write_readme:
        write_readme(results, HERE / "README.md")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.only or list(CANDIDATES):
        r = run_candidate(name, args.dataset_dir, Path(args.runs_dir), args.test, args.seed,
                          results.get("candidates", {}).get(name, {}))
        results.setdefault("candidates", {})[name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "options"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
