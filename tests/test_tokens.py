import hashlib
import inspect
import os
import re
import subprocess
import sys

import pytest
import tiktoken
import tiktoken_ext.openai_public

from scrapy_llm_extract import tokens
from scrapy_llm_extract.tokens import (
    BUNDLED_RANKS,
    EncodingUnavailable,
    bundled_rank_bytes,
    count_tokens,
    encoding_name_for_model,
    truncate_to_tokens,
)

from .tiny_project import crawl


@pytest.fixture
def empty_tiktoken_cache(tmp_path, monkeypatch):
    """A tiktoken cache with nothing in it, and no memoised encodings."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens.get_encoding.cache_clear()
    yield tmp_path
    tokens.get_encoding.cache_clear()


@pytest.mark.parametrize("name", sorted(BUNDLED_RANKS))
def test_bundled_urls_and_hashes_are_tiktokens_own(name):
    source = inspect.getsource(getattr(tiktoken_ext.openai_public, name))
    ranks = BUNDLED_RANKS[name]
    assert ranks.url in source
    assert re.search(rf'expected_hash="{ranks.sha256}"', source)


@pytest.mark.parametrize("name", sorted(BUNDLED_RANKS))
def test_bundled_rank_files_match_expected_sha256(name):
    data = bundled_rank_bytes(name)
    assert hashlib.sha256(data).hexdigest() == BUNDLED_RANKS[name].sha256


@pytest.mark.parametrize("name", sorted(BUNDLED_RANKS))
def test_encodings_load_from_an_empty_cache_without_network(empty_tiktoken_cache, name):
    # CI has no network: tiktoken could only succeed here from the bundled file.
    encoding = tokens.get_encoding(name)
    assert isinstance(encoding, tiktoken.Encoding)
    assert encoding.name == name
    assert encoding.decode(encoding.encode("Prix : 12,99 €")) == "Prix : 12,99 €"
    assert any(empty_tiktoken_cache.iterdir())


def test_a_corrupt_cached_file_is_replaced(empty_tiktoken_cache):
    ranks = BUNDLED_RANKS["o200k_base"]
    target = empty_tiktoken_cache / hashlib.sha1(ranks.url.encode()).hexdigest()
    target.write_bytes(b"garbage")
    tokens.get_encoding("o200k_base")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == ranks.sha256


def test_a_fresh_interpreter_counts_from_a_corrupt_cache_offline(tmp_path):
    """tiktoken keeps encodings in memory: only a new process really reads the cached file."""
    ranks = BUNDLED_RANKS["o200k_base"]
    (tmp_path / hashlib.sha1(ranks.url.encode()).hexdigest()).write_bytes(b"garbage")
    # A download would go through this dead proxy and fail.
    proxy = "http://127.0.0.1:9"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": proxy}
    script = "from scrapy_llm_extract.tokens import count_tokens\n" + (
        "print(count_tokens('hello world', 'gpt-4o-mini'))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2"


def test_disabled_cache_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    tokens.get_encoding.cache_clear()
    try:
        with pytest.raises(EncodingUnavailable, match="TIKTOKEN_CACHE_DIR"):
            tokens.get_encoding("o200k_base")
    finally:
        tokens.get_encoding.cache_clear()


def test_model_encodings():
    assert encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_name_for_model("gpt-4") == "cl100k_base"
    assert encoding_name_for_model("my-azure-deployment") == "o200k_base"


def test_counts_are_exact_and_special_tokens_are_plain_text():
    text = "Blue mug <|endoftext|> 12.99"
    assert count_tokens(text, "gpt-4o-mini") == len(
        tokens.get_encoding("o200k_base").encode(text, disallowed_special=())
    )
    assert count_tokens("hello world", "gpt-4o-mini") == 2


def test_truncate_to_tokens():
    text = " ".join(f"word{i}" for i in range(500))
    cut, truncated = truncate_to_tokens(text, 50, "gpt-4o-mini")
    assert truncated
    assert count_tokens(cut, "gpt-4o-mini") <= 50
    assert text.startswith(cut)
    same, truncated = truncate_to_tokens("short", 50, "gpt-4o-mini")
    assert (same, truncated) == ("short", False)


def test_an_encoding_built_on_a_bundled_one_loads_offline(tmp_path):
    """gpt-oss (served by vLLM and other OpenAI-compatible servers) uses o200k_harmony, which
    tiktoken builds from o200k_base's rank file: a fresh interpreter counts it offline."""
    assert encoding_name_for_model("gpt-oss-20b") == "o200k_harmony"
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9"}
    script = "from scrapy_llm_extract.tokens import count_tokens\n" + (
        "print(count_tokens('hello world', 'gpt-oss-20b'))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "2"


def test_a_model_whose_tokenizer_cannot_load_offline_stops_the_crawl_with_one_line(tmp_path):
    result = crawl(
        tmp_path,
        "LLM_EXTRACT_MODEL = 'text-davinci-003'\n",  # p50k_base: not bundled
        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"), "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "tiktoken could not load the p50k_base encoding" in errors[0]
    assert "Traceback" not in result.stderr
