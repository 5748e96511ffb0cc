"""Exact token counts with tiktoken, offline.

tiktoken downloads its rank files on first use, which a crawler with no
network (CI, air-gapped workers) cannot do. This package ships the
``o200k_base`` and ``cl100k_base`` rank files and hands them to tiktoken
through tiktoken's own cache, so tiktoken still verifies them against the
sha256 it expects. There is no estimate fallback: if no exact encoding can be
loaded, loading fails with an error that says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import tiktoken


@dataclass(frozen=True)
class BundledRanks:
    """A rank file shipped with this package, and where tiktoken looks for it."""

    url: str
    sha256: str

    @property
    def resource(self) -> str:
        return self.url.rsplit("/", 1)[1] + ".gz"


#: The URLs and hashes are tiktoken's own (``tiktoken_ext/openai_public.py``);
#: a test checks they still match the installed tiktoken.
BUNDLED_RANKS: dict[str, BundledRanks] = {
    "o200k_base": BundledRanks(
        url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": BundledRanks(
        url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

#: Used for model names tiktoken does not know (fine-tunes, deployments, new models).
DEFAULT_ENCODING = "o200k_base"


class EncodingUnavailable(RuntimeError):
    """No exact tokenizer could be loaded for a model."""


def tiktoken_cache_dir() -> Path | None:
    """The folder tiktoken reads cached rank files from (None: caching disabled)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            value = os.environ[variable]
            return Path(value) if value else None
    return Path(tempfile.gettempdir(), "data-gym-cache")


def bundled_rank_bytes(name: str) -> bytes:
    """The bundled rank file of encoding ``name``, checked against tiktoken's sha256."""
    ranks = BUNDLED_RANKS[name]
    data = gzip.decompress(files(__package__).joinpath("_data", ranks.resource).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != ranks.sha256:
        raise EncodingUnavailable(
            f"The bundled {name} rank file is corrupt (sha256 {digest}, expected"
            f" {ranks.sha256}); reinstall scrapy-llm-extract."
        )
    return data


def _seed_tiktoken_cache(name: str) -> None:
    """Put the bundled rank file where tiktoken would have cached its own download."""
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None:
        raise EncodingUnavailable(
            f"tiktoken caching is disabled (TIKTOKEN_CACHE_DIR is empty), so the bundled"
            f" {name} rank file cannot be used offline; unset TIKTOKEN_CACHE_DIR or point"
            " it at a writable folder."
        )
    ranks = BUNDLED_RANKS[name]
    target = cache_dir / hashlib.sha1(ranks.url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == ranks.sha256:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(bundled_rank_bytes(name))
    os.replace(partial, target)


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding a model uses (o200k_base for names tiktoken does not know)."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """Load encoding ``name`` without touching the network when its rank file is bundled.

    An encoding tiktoken builds on a bundled one (gpt-oss's ``o200k_harmony`` adds special
    tokens to ``o200k_base``'s ranks) reads that file, so every bundled file is seeded for it.
    """
    for bundled in [name] if name in BUNDLED_RANKS else sorted(BUNDLED_RANKS):
        try:
            _seed_tiktoken_cache(bundled)
        except OSError as exc:
            raise EncodingUnavailable(
                f"Could not write the bundled {bundled} rank file to tiktoken's cache"
                f" ({exc}); set TIKTOKEN_CACHE_DIR to a writable folder."
            ) from exc
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:
        raise EncodingUnavailable(
            f"tiktoken could not load the {name} encoding ({exc}). Only o200k_base and"
            " cl100k_base are bundled for offline use; set LLM_EXTRACT_MODEL to a model"
            " that uses one of them, or allow tiktoken to download its rank files once."
        ) from exc


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_tokens(text: str, model: str) -> int:
    """Exact number of tokens ``text`` costs with ``model``'s encoding."""
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def truncate_to_tokens(text: str, max_tokens: int, model: str) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_tokens`` tokens; also say whether it was cut."""
    encoding = encoding_for_model(model)
    tokens = encoding.encode(text, disallowed_special=())
    if len(tokens) <= max_tokens:
        return text, False
    return encoding.decode(tokens[: max(max_tokens, 0)]), True
