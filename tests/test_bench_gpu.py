"""``benchmarks/bench_gpu.py``: its code path runs on a CPU with toy shapes (``--quick``, what CI can run), and the
README's speed tables are the ones the committed results files give."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_torch_thread")
def test_quick_run_writes_every_row(tmp_path):
    report = _bench().main(["--quick", "--no-compile", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert saved["quick"] and saved["commit"] and saved["rows"] == report["rows"]
    rows = {r["row"]: r for r in saved["rows"]}
    assert set(rows) == {"pix2pix_train", "pix2pix_infer", "reference_train", "reference_infer", "controlnet_train",
                         "controlnet_sample"}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["gflop_per_image"] > 0, r
    # a training step costs about 3 forward passes of G (+ D): more FLOPs than inference, counted the same way
    assert rows["pix2pix_train"]["gflop_per_image"] > 2 * rows["pix2pix_infer"]["gflop_per_image"]
    assert rows["reference_infer"]["gflop_per_image"] == pytest.approx(rows["pix2pix_infer"]["gflop_per_image"], rel=0.05)
    assert all(v > 0 for v in saved["ratios"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the full benchmark would run")
def test_without_a_gpu_the_full_run_is_skipped(tmp_path, capsys):
    assert _bench().main(["--out", str(tmp_path)]) is None
    assert "no CUDA device" in capsys.readouterr().out and not (tmp_path / "gpu_bench.json").exists()


def test_readme_speed_tables_come_from_the_committed_results():
    bench = _bench()
    text = (ROOT / "README.md").read_text()
    block = bench.README_START + text.split(bench.README_START, 1)[1].split(bench.README_END, 1)[0] + bench.README_END
    assert block == bench.speed_block(ROOT / "bench_results"), "run: python benchmarks/bench_gpu.py --readme"


def test_device_peaks():
    bench = _bench()
    assert bench.device_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.device_peak("NVIDIA H100 PCIe") == 756.0
    assert bench.device_peak("NVIDIA H200") == 989.0
    assert bench.device_peak("Some Future Card") is None
