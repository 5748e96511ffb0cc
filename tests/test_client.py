"""API keys: stripped of the newline a mounted secret file ends with, and never quoted back."""

from __future__ import annotations

from scrapy_llm_extract.client import api_key, redact, sync_client
from tests.helpers import make_config


def test_a_key_read_from_a_secret_file_is_stripped(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789\n")
    assert api_key(make_config()) == "sk-from-env-0123456789"
    assert sync_client(make_config()).api_key == "sk-from-env-0123456789"
    config = make_config(LLM_EXTRACT_API_KEY="  sk-setting-0123456789\r\n")
    assert sync_client(config).api_key == "sk-setting-0123456789"


def test_a_blank_key_counts_as_none(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", " \n")
    assert api_key(make_config()) is None


def test_redact_removes_the_key_and_anything_shaped_like_one():
    key = "sk-proj-abcdefghijklmnop"
    text = f"Illegal header value b'Bearer {key}\\n' and Incorrect API key: sk-abc123****wxyz"
    clean = redact(text, key)
    assert key not in clean
    assert "sk-abc123" not in clean
    assert clean.count("[API key]") == 2
