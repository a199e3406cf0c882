"""Candidate building segmenters (judges) for sn7_labelled, issue 32: trained on the TRAIN blocks (every labelled
month), compared on the VALIDATION blocks, reported on the TEST blocks and on sn7_real_tile (another area).

Each candidate is trained with :func:`stsynth_lib.metrics.segmentation.train_segmenter` (its options: input upsampling,
width/depth, crops, tile sampling, boundary weights), saved under ``--save-dir/<name>/segmenter.pt`` and scored on
the real images at the library's threshold (0.5, as chapter 6 scores):

* ``f1_tiles``: pixel building F1 pooled over every labelled tile of the split once (each month, valid pixels);
* ``f1_future``: the same over the split's pairs' real future images (chapter 6's ``real_future`` row);
* ``f1_new``: pixel F1 on new buildings (footprint at t1, not at t0) of the real future (chapter 6's F1 new);
* ``object_recall_new``: new footprint components the judge calls building on >= half their pixels, pooled over
  the pairs (:func:`stsynth_lib.metrics.new_building_objects`), and ``unrequested_share``;
* ``f1_real_tile``: pixel F1 on the one labelled month of ``sn7_real_tile`` (another area, 128 px tiles).

Results go to ``--out`` (JSON, one entry per candidate, merged with what is there); ``--write-readme`` regenerates
the tables of the study README from that file. Run candidates one at a time (``--only``) to keep each job short.
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

# name -> train_segmenter options; "judge300" is chapter 6's judge (params/sn7_labelled/common.yaml's settings)
CANDIDATES: dict[str, dict] = {
    "judge300": {"steps": 300},
    "up2": {"steps": 300, "upsample": 2, "crop_px": 64, "sample_by": "tiles"},
    "up1_same_cost": {"steps": 300, "upsample": 1, "crop_px": 64, "sample_by": "tiles"},
    "up2_edge": {"steps": 300, "upsample": 2, "crop_px": 64, "sample_by": "tiles", "edge_weight": 2.0},
    "up2_wide": {"steps": 300, "upsample": 2, "crop_px": 64, "sample_by": "tiles", "base_channels": 32, "depth": 4},
    "up3": {"steps": 300, "upsample": 3, "crop_px": 64, "sample_by": "tiles"},
    # is it training length? up2 at 4x the steps (about 18 min on 2 quiet cores)
    "up2_long": {"steps": 1200, "upsample": 2, "crop_px": 64, "sample_by": "tiles"},
}
BAR = {"f1_future": 0.55, "object_recall_new": 0.5}
README_START, README_END = "<!-- judges:start -->", "<!-- judges:end -->"


def _probs(model, images_uint8, batch_size: int = 16):
    """Building probabilities (N, H, W) float32 of uint8 images (N, C, H, W), plain eval-mode model."""
    import numpy as np
    import torch

    from stsynth_lib.metrics.segmentation import input_multiple

    m = input_multiple(model)
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            x = torch.as_tensor(np.asarray(images_uint8[i:i + batch_size]), dtype=torch.float32) / 127.5 - 1
            h, w = x.shape[-2:]
            ph, pw = (-h) % m, (-w) % m
            if ph or pw:
                x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
            out.append(torch.sigmoid(model(x))[:, 0, :h, :w].numpy())
    return np.concatenate(out)


def split_probs(model, store, split: str):
    """Building probabilities of every labelled tile image of ``split`` (what :func:`score_split` thresholds)."""
    from stsynth_lib.metrics.segmentation import labelled_tile_ids

    return _probs(model, store.images[labelled_tile_ids(store.pairs, split)])


def score_split(model, store, split: str, threshold: float = 0.5, probs=None) -> dict:
    """The judge's scores on the real images of one split (see the module docstring); ``probs``: the split's
    probabilities from :func:`split_probs` (computed here when None)."""
    import numpy as np

    from stsynth_lib import metrics as M
    from stsynth_lib.metrics.segmentation import labelled_tile_ids

    ids = labelled_tile_ids(store.pairs, split)
    probs = split_probs(model, store, split) if probs is None else probs
    pred = (probs > threshold).astype(np.uint8)
    masks = np.asarray(store.masks[ids]).astype(np.uint8)
    valid = np.asarray(store.valid[ids]).astype(bool)
    tp = int((pred.astype(bool) & masks.astype(bool) & valid).sum())
    fp = int((pred.astype(bool) & ~masks.astype(bool) & valid).sum())
    fn = int((~pred.astype(bool) & masks.astype(bool) & valid).sum())
    pos = {t: i for i, t in enumerate(ids)}
    pairs = store.pairs[(store.pairs["split"] == split) & store.pairs["has_mask"].to_numpy(bool)]
    i0 = np.array([pos[t] for t in pairs["past_tile_id"]])
    i1 = np.array([pos[t] for t in pairs["future_tile_id"]])
    acc = {k: 0.0 for k in ("tp", "fp", "fn", "tp_new", "fp_new", "fn_new", "new_objects", "new_objects_drawn",
                            "unrequested_px", "unbuilt_px")}
    for a in range(0, len(pairs), 256):
        s0, s1 = i0[a:a + 256], i1[a:a + 256]
        p, fut, past = pred[s1][:, None], masks[s1][:, None], masks[s0][:, None]
        v = (valid[s0] & valid[s1])[:, None].astype(np.float32)
        b = M.building_scores(p, fut, v)
        nb = M.new_building_scores(p, fut, past, v)
        ob = M.new_building_objects(p, fut, past, v)
        for k in ("tp", "fp", "fn"):
            acc[k] += float(np.sum(b[k]))
            acc[f"{k}_new"] += float(np.sum(nb[k]))
        for k in ("new_objects", "new_objects_drawn", "unrequested_px", "unbuilt_px"):
            acc[k] += float(np.sum(ob[k]))

    def f1(tp_, fp_, fn_):
        return 2 * tp_ / (2 * tp_ + fp_ + fn_) if tp_ + fp_ + fn_ else float("nan")

    return {"tiles": len(ids), "pairs": len(pairs),
            "f1_tiles": f1(tp, fp, fn), "precision_tiles": tp / max(tp + fp, 1), "recall_tiles": tp / max(tp + fn, 1),
            "f1_future": f1(acc["tp"], acc["fp"], acc["fn"]),
            "f1_new": f1(acc["tp_new"], acc["fp_new"], acc["fn_new"]),
            "recall_new_px": acc["tp_new"] / max(acc["tp_new"] + acc["fn_new"], 1),
            "new_objects": int(acc["new_objects"]),
            "object_recall_new": acc["new_objects_drawn"] / acc["new_objects"] if acc["new_objects"] else float("nan"),
            "unrequested_share": acc["unrequested_px"] / max(acc["unbuilt_px"], 1)}


def load_real_tile(root: Path, tile: int = 128):
    """The labelled month of ``sn7_real_tile`` as 128 px tiles: (images uint8 (N, 3, T, T), masks, valid)."""
    import numpy as np

    from stsynth_lib.data.build import tile_grid
    from stsynth_lib.data.io import read_raster, validity_mask
    from stsynth_lib.data.rasterize import footprint_mask
    from stsynth_lib.data.sn7 import scan_sn7

    row = scan_sn7(root, progress=False).iloc[0].to_dict()
    img, prof = read_raster(row["image_path"], with_profile=True)
    crs = prof["crs"].to_string() if prof["crs"] else None
    mask = footprint_mask(row, img.shape[1:], prof["transform"], crs)
    valid = validity_mask(img, alpha_band=3 if img.shape[0] > 3 else None)
    grid = tile_grid(img.shape[1], img.shape[2], tile)
    take = lambda a: np.stack([a[..., r:r + tile, c:c + tile] for r, c in grid])  # noqa: E731
    return take(img[:3]), take(mask), take(valid)


def score_real_tile(model, real, threshold: float = 0.5) -> dict:
    images, masks, valid = real
    pred = _probs(model, images) > threshold
    m, v = masks.astype(bool), valid.astype(bool)
    tp, fp, fn = int((pred & m & v).sum()), int((pred & ~m & v).sum()), int((~pred & m & v).sum())
    return {"f1_real_tile": 2 * tp / max(2 * tp + fp + fn, 1), "precision_real_tile": tp / max(tp + fp, 1),
            "recall_real_tile": tp / max(tp + fn, 1)}


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def readme_tables(results: dict) -> str:
    """Markdown tables of the results file (validation, then test), the 300-step judge first."""
    order = [n for n in CANDIDATES if n in results] + [n for n in results if n not in CANDIDATES and "options" in results[n]]
    lines = []
    for split, title in (("val", "Validation blocks (the choice is made here)"),
                         ("test", "Test blocks (reported once; not used to choose)")):
        lines += [f"**{title}.**", "",
                  "| candidate | settings | steps | s train | F1 real future | F1 tiles | F1 new | object recall new "
                  "| unrequested share |" + (" F1 sn7_real_tile |" if split == "test" else ""),
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if split == "test" else "")]
        for n in order:
            r = results[n]
            s = r[split]
            opts = ", ".join(f"{k} {v}" for k, v in r["options"].items() if k != "steps") or "chapter 6's defaults"
            row = (f"| {n} | {opts} | {r['options'].get('steps')} | {r['train_seconds']:.0f} | {_fmt(s['f1_future'])} "
                   f"| {_fmt(s['f1_tiles'])} | {_fmt(s['f1_new'])} | {_fmt(s['object_recall_new'])} "
                   f"({s['new_objects']}) | {_fmt(s['unrequested_share'])} |")
            if split == "test":
                row += f" {_fmt(r['real_tile']['f1_real_tile'])} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def margin(scores: dict) -> float:
    """How far one split's scores clear the bar: min(F1 / 0.55, recall / 0.5); >= 1 clears it."""
    return min(scores["f1_future"] / BAR["f1_future"], scores["object_recall_new"] / BAR["object_recall_new"])


def choose(results: dict) -> tuple[str, float]:
    """The candidate whose VALIDATION scores clear the bar by the widest :func:`margin`."""
    best = max((n for n in results if "options" in results[n]), key=lambda n: margin(results[n]["val"]))
    return best, margin(results[best]["val"])


def threshold_lines(results: dict) -> list[str]:
    """The README section of the threshold sweep (``--thresholds``), from the results file."""
    rounds = results.get("threshold_sweep") or []
    rounds = [rounds] if isinstance(rounds, dict) else rounds
    lines = []
    for k, sw in enumerate(rounds, 1):
        thr = [f"{t:g}" for t in sw["thresholds"]]
        lines += [f"**The judge's threshold, round {k}, chosen on validation** (`--thresholds " + " ".join(thr)
                  + "`; pixel F1 on the real future / object recall of real new buildings, validation blocks).", "",
                  "| judge | " + " | ".join(f"p > {t}" for t in thr) + " |", "|---|" + "---:|" * len(thr)]
        for name, by_t in sw["val"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{_fmt(by_t[t]['f1_future'])} / {_fmt(by_t[t]['object_recall_new'])}" for t in thr) + " |")
        c = sw["chosen"]
        t = c["test"]
        clears = t["f1_future"] >= BAR["f1_future"] and t["object_recall_new"] >= BAR["object_recall_new"]
        lines += ["", f"**Round {k} chose** `{c['judge']}` at p > {c['threshold']:g} (validation margin "
                  f"{c['val_margin']:.2f}; >= 1 clears the bar there). Its test blocks, scored once: F1 "
                  f"{_fmt(t['f1_future'])} on the real future images, object recall {_fmt(t['object_recall_new'])} of "
                  f"{t['new_objects']} real new buildings, unrequested share {_fmt(t['unrequested_share'])}: the bar "
                  f"(F1 >= 0.55 and recall >= 0.5) is **{'cleared' if clears else 'not cleared'}**.", ""]
    if len(rounds) > 1:
        lines += [f"Each round looked at the test blocks once, for its own choice: {len(rounds)} looks in all, so the "
                  "last round's test figure is not an untouched estimate.", ""]
    return lines


def write_readme(results: dict, readme: Path, out: Path, command: str) -> None:
    best, m = choose(results)
    r = results[best]
    t = r["test"]
    clears = t["f1_future"] >= BAR["f1_future"] and t["object_recall_new"] >= BAR["object_recall_new"]
    missing = [n for n in CANDIDATES if n not in results]
    body = [README_START, f"<!-- generated by compare_judges.py --write-readme from {out.relative_to(ROOT)}; do not edit -->", "",
            readme_tables(results),
            (f"**Not run yet:** {', '.join(f'`{n}`' for n in missing)} (settings in `CANDIDATES` of the script); "
             "the choice below is among the candidates above only." if missing else ""), "",
            f"**Chosen on validation:** `{best}` (min of F1 / 0.55 and object recall / 0.5 on the validation blocks: "
            f"{m:.2f}; >= 1 clears the bar there). On the test blocks it has F1 {_fmt(t['f1_future'])} on the real "
            f"future images and object recall {_fmt(t['object_recall_new'])} of real new buildings, against "
            f"{_fmt(results['judge300']['test']['f1_future'])} and {_fmt(results['judge300']['test']['object_recall_new'])} "
            f"for the 300-step judge: the issue's bar (F1 >= 0.55 and recall >= 0.5) is "
            f"**{'cleared' if clears else 'not cleared'}**." if "judge300" in results else "", "",
            f"Re-run: `{command}`", "", *threshold_lines(results), README_END]
    text = readme.read_text(encoding="utf-8")
    if README_START in text:
        a, b = text.index(README_START), text.index(README_END) + len(README_END)
        text = text[:a] + "\n".join(body) + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    readme.write_text(text, encoding="utf-8")


def sweep_thresholds(args, store, out: Path) -> None:
    """The judge's decision threshold is a setting like any other: each saved judge is scored on the validation
    blocks at every threshold (probabilities computed once), the (judge, threshold) with the widest validation
    margin over the bar (:func:`choose`'s rule) is chosen, and only that choice is scored on the test blocks."""
    from stsynth_lib.metrics.segmentation import load_segmenter

    results = json.loads(out.read_text()) if out.is_file() else {}
    sweep = {}
    for name in [n for n in results if n in CANDIDATES and (Path(args.save_dir) / n / "segmenter.pt").is_file()]:
        model, _ = load_segmenter(Path(args.save_dir) / name / "segmenter.pt")
        probs = split_probs(model, store, "val")
        sweep[name] = {f"{t:g}": score_split(model, store, "val", t, probs) for t in args.thresholds}
        print(name, {t: (round(v["f1_future"], 3), round(v["object_recall_new"], 3)) for t, v in sweep[name].items()},
              flush=True)
    name, thr = max(((n, t) for n in sweep for t in sweep[n]), key=lambda nt: margin(sweep[nt[0]][nt[1]]))
    model, _ = load_segmenter(Path(args.save_dir) / name / "segmenter.pt")
    test = score_split(model, store, "test", float(thr))
    rounds = results.get("threshold_sweep", [])
    rounds = [rounds] if isinstance(rounds, dict) else rounds  # every round is kept: each looked at test once
    rounds.append({"thresholds": args.thresholds, "val": sweep,
                   "chosen": {"judge": name, "threshold": float(thr), "val_margin": margin(sweep[name][thr]),
                              "val": sweep[name][thr], "test": test}})
    results["threshold_sweep"] = rounds
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print("chosen on validation:", name, thr, "test:", json.dumps(test), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/sn7_labelled/dataset", help="sn7_labelled's tile store (notebook 02)")
    ap.add_argument("--real-tile", default="../shared/data/sn7_real_tile", help="another labelled area (one month)")
    ap.add_argument("--only", nargs="*", default=None, help=f"candidates to train now (default all): {list(CANDIDATES)}")
    ap.add_argument("--save-dir", default="runs/sn7_labelled/segmenter_candidates", help="where the judges are saved")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "judges_sn7_labelled.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-readme", action="store_true", help="only regenerate the README tables from --out")
    ap.add_argument("--thresholds", nargs="+", type=float, metavar="P",
                    help="instead of training: score the saved judges (--save-dir) on VALIDATION at each probability "
                         "threshold, choose (judge, threshold) there, then score only that choice on test, once")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    results = json.loads(out.read_text()) if out.is_file() else {}
    command = ("OMP_NUM_THREADS=2 .venv/bin/python experiments/segmenter/compare_judges.py --only "
               + " ".join(CANDIDATES) + " && .venv/bin/python experiments/segmenter/compare_judges.py --write-readme")
    if args.write_readme:
        write_readme(results, Path(__file__).parent / "README.md", out, command)
        return 0

    from stsynth_lib.data.dataset import TileStore
    from stsynth_lib.metrics.segmentation import dataset_fingerprint, save_segmenter, train_segmenter

    store = TileStore(args.dataset)
    if args.thresholds:
        sweep_thresholds(args, store, out)
        return 0
    real = load_real_tile(Path(args.real_tile)) if Path(args.real_tile).is_dir() else None
    for name in args.only or list(CANDIDATES):
        opts = CANDIDATES[name]
        print(f"== {name}: {opts}", flush=True)
        model, info = train_segmenter(args.dataset, seed=args.seed, progress=False, **opts)
        save_segmenter(model, Path(args.save_dir) / name / "segmenter.pt", info)
        t0 = time.perf_counter()
        entry = {"options": opts, "seed": args.seed, "train_seconds": info["seconds"], "n_params": info["n_params"],
                 "final_loss": info["final_loss"], "dataset_fingerprint": dataset_fingerprint(args.dataset),
                 "val": score_split(model, store, "val"), "test": score_split(model, store, "test"),
                 "real_tile": score_real_tile(model, real) if real is not None else {"f1_real_tile": float("nan")}}
        entry["score_seconds"] = time.perf_counter() - t0
        print(json.dumps({k: entry[k] for k in ("train_seconds", "val", "test", "real_tile")}, indent=1), flush=True)
        results = json.loads(out.read_text()) if out.is_file() else {}
        results[name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
