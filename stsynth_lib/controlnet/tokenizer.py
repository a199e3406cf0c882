"""A real CLIP tokenizer that works offline, and a guard against fake ones.

Stable Diffusion 1.x tokenises prompts with OpenAI CLIP's byte-level BPE
(49,408 tokens). Offline, a ``from_pretrained`` call can silently hand back a
tokenizer with a toy vocabulary (test fixtures ship such files), and every
prompt then maps to ``<|endoftext|>``: training runs, the loss falls, and the
text conditioning is garbage. :func:`check_tokenizer` catches that.

:func:`build_clip_tokenizer` rebuilds the exact CLIP vocabulary from the
``bpe_simple_vocab_16e6.txt.gz`` file that the ``open_clip_torch`` wheel ships
(the same construction as OpenAI's ``SimpleTokenizer``), writes
``vocab.json``/``merges.txt`` to a cache folder and returns a
``transformers.CLIPTokenizer`` -- identical ids to ``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
# Known ids of the real CLIP vocabulary: "a photo of a cat" (OpenAI CLIP README example).
_REFERENCE_TEXT = "a photo of a cat"
_REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
_ROUNDTRIP_TEXT = "a satellite image of a city with new buildings"


class TokenizerCheckError(RuntimeError):
    """The tokenizer is not a real CLIP tokenizer (toy vocabulary, wrong ids, lossy round trip)."""


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def open_clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package."""
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - open_clip_torch is in the diffusion extra
        raise ImportError(
            "open_clip_torch is needed to build the CLIP tokenizer offline: pip install 'stsynth[diffusion]' "
            "(or pip install open_clip_torch)."
        ) from e
    p = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: the open_clip_torch install is incomplete; reinstall open_clip_torch.")
    return p


def clip_vocab_and_merges(bpe_path: str | os.PathLike | None = None) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merges) built exactly like OpenAI CLIP's ``SimpleTokenizer``."""
    bpe_path = Path(bpe_path) if bpe_path else open_clip_bpe_path()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(_bytes_to_unicode().values())
    tokens = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(out_dir: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIP format) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    from stsynth_lib.runs import atomic_write_text

    atomic_write_text(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(out_dir / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir


def default_cache_dir() -> Path:
    base = os.environ.get("STSYNTH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "stsynth")
    return Path(base) / "clip_tokenizer"


@lru_cache(maxsize=4)
def _build_cached(cache_dir: str, model_max_length: int):
    from transformers import CLIPTokenizer

    d = Path(cache_dir)
    if not ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
        write_clip_tokenizer_files(d)
    tok = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=model_max_length)
    check_tokenizer(tok, source=f"open_clip's bpe_simple_vocab_16e6.txt.gz via {d}")
    return tok


def build_clip_tokenizer(cache_dir: str | os.PathLike | None = None, model_max_length: int = 77):
    """The real CLIP tokenizer (``transformers.CLIPTokenizer``), built offline from open_clip's BPE file."""
    return _build_cached(str(Path(cache_dir) if cache_dir else default_cache_dir()), int(model_max_length))


def check_tokenizer(tok, source: str = "the tokenizer") -> None:
    """Fail loudly unless ``tok`` is a real CLIP tokenizer.

    Checks the vocabulary size (49,408), the ids of a reference phrase, and that
    a plain phrase survives encode/decode. Raises :class:`TokenizerCheckError`
    naming what is wrong and how to fix it.
    """
    fix = (
        "Use stsynth_lib.controlnet.tokenizer.build_clip_tokenizer() (real CLIP vocabulary from open_clip's wheel) "
        "or point pretrained_model at a complete Stable Diffusion download whose tokenizer/ folder holds the "
        "full vocab.json and merges.txt."
    )
    size = len(tok)
    if size != CLIP_VOCAB_SIZE:
        raise TokenizerCheckError(
            f"{source}: vocabulary has {size} tokens, a CLIP tokenizer has {CLIP_VOCAB_SIZE}. This is a toy or "
            f"truncated tokenizer (e.g. an offline test fixture): every prompt would collapse to unknown tokens. {fix}"
        )
    ids = list(tok(_REFERENCE_TEXT)["input_ids"])
    if ids != _REFERENCE_IDS:
        raise TokenizerCheckError(
            f"{source}: {_REFERENCE_TEXT!r} encodes to {ids}, the CLIP vocabulary gives {_REFERENCE_IDS}. "
            f"The vocabulary has the right size but the wrong content or merges. {fix}"
        )
    ids = tok(_ROUNDTRIP_TEXT)["input_ids"]
    back = tok.decode(ids, skip_special_tokens=True)
    if " ".join(back.split()) != _ROUNDTRIP_TEXT:
        raise TokenizerCheckError(f"{source}: {_ROUNDTRIP_TEXT!r} decodes back to {back!r}. {fix}")
