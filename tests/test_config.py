from pathlib import Path

import pytest

from scrapy_llm_extract.config import SETTINGS, Config

from .helpers import make_config


def test_defaults():
    config = make_config()
    assert config.model == "gpt-4o-mini"
    assert config.source_field == "html"
    assert config.priority_field == "priority"
    assert config.realtime_max_age == 300
    assert config.output_field is None
    assert config.batch_max_requests == 50_000
    assert config.batch_max_bytes == 200_000_000
    assert config.concurrent_requests == 16
    assert config.submit_on_close is True
    assert config.api_key is None
    assert config.base_url is None
    assert config.emulator_dir is None


def test_every_setting_has_a_doc_and_a_config_field():
    fields = set(Config.__dataclass_fields__)
    for name, setting in SETTINGS.items():
        assert name.startswith("LLM_EXTRACT_")
        assert setting.doc.endswith((".", ")"))
        assert name.removeprefix("LLM_EXTRACT_").lower() in fields


def test_relative_folders_live_in_the_project_data_dir():
    config = make_config(LLM_EXTRACT_SPOOL_DIR="spool", LLM_EXTRACT_CACHE_DIR="/abs/cache")
    assert config.spool_dir.name == "spool"
    assert ".scrapy" in config.spool_dir.parts
    assert config.cache_dir == Path("/abs/cache")


def test_settings_override_and_parse():
    config = make_config(
        LLM_EXTRACT_MODEL="gpt-4.1-mini",
        LLM_EXTRACT_SUBMIT_ON_CLOSE="False",
        LLM_EXTRACT_RPM="120",
        LLM_EXTRACT_ROUTER="tests.test_router.always_skip",
        LLM_EXTRACT_PRICES='{"gpt-4.1-mini": {"input": 1}}',
        LLM_EXTRACT_PREPARE_WORKERS="0",
    )
    assert config.model == "gpt-4.1-mini"
    assert config.submit_on_close is False
    assert config.router({}, None) == "skip"
    assert config.prices == {"gpt-4.1-mini": {"input": 1}}
    assert config.prepare_workers == 0


def test_prepare_workers_default_to_the_cores_the_crawl_leaves_free(monkeypatch):
    for cores, workers in ((1, 0), (2, 1), (8, 4), (None, 0)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert make_config().prepare_workers == workers


def test_api_key_is_not_in_the_repr():
    assert "sk-secret" not in repr(make_config(LLM_EXTRACT_API_KEY="sk-secret"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLM_EXTRACT_CONCURRENT_REQUESTS", 0),
        ("LLM_EXTRACT_BATCH_MAX_BYTES", -1),
        ("LLM_EXTRACT_MAX_INPUT_TOKENS", "many"),
        ("LLM_EXTRACT_REALTIME_FALLBACK", "drop"),
        ("LLM_EXTRACT_PREPARE_WORKERS", -1),
        ("LLM_EXTRACT_PREPARE_WORKERS", 1.5),
    ],
)
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(ValueError, match=name):
        make_config(**{name: value})
