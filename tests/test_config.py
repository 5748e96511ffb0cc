import json
from pathlib import Path

import pytest

from scrapy_llm_extract.config import SETTINGS, Config, ConfigError, unknown_settings

from .helpers import make_config
from .tiny_project import crawl


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


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "LLM_EXTRACT_CONCURRENT_REQUESTS = -3",
            "LLM_EXTRACT_CONCURRENT_REQUESTS must be a whole number > 0, got -3.",
        ),
        (
            'LLM_EXTRACT_REALTIME_FALLBACK = "bogus"',
            "LLM_EXTRACT_REALTIME_FALLBACK must be 'batch' or 'error', got 'bogus'.",
        ),
        ("LLM_EXTRACT_MODEL = 42", "LLM_EXTRACT_MODEL must be a non-empty string, got 42."),
    ],
)
def test_an_invalid_setting_stops_the_crawl_with_one_line_and_exit_1(tmp_path, setting, message):
    result = crawl(tmp_path, setting)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"[scrapy_llm_extract.startup] ERROR: {message}")
    assert "Traceback" not in result.stderr
    assert "Spider opened" not in result.stderr


def test_misspelt_setting_names_are_reported_with_the_likely_one(tmp_path):
    result = crawl(tmp_path, "LLM_EXTRACT_CONCURENT_REQUESTS = 3\nLLM_EXTRACT_COLOUR = 1\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "WARNING: LLM_EXTRACT_CONCURENT_REQUESTS is not a scrapy-llm-extract setting and is"
        " ignored. Did you mean LLM_EXTRACT_CONCURRENT_REQUESTS?"
    ) in result.stderr
    assert "WARNING: LLM_EXTRACT_COLOUR is not a scrapy-llm-extract setting and is ignored.\n" in (
        result.stderr
    )


def test_unknown_names_get_a_suggestion_only_when_one_is_close():
    assert unknown_settings(["LLM_EXTRACT_SPOOLDIR", "LLM_EXTRACT_FOO", "LLM_EXTRACT_MODEL"]) == [
        "LLM_EXTRACT_FOO is not a scrapy-llm-extract setting and is ignored.",
        "LLM_EXTRACT_SPOOLDIR is not a scrapy-llm-extract setting and is ignored."
        " Did you mean LLM_EXTRACT_SPOOL_DIR?",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLM_EXTRACT_MODEL", 42),
        ("LLM_EXTRACT_SOURCE_FIELD", ""),
        ("LLM_EXTRACT_KEEP_SOURCE", "maybe"),
        ("LLM_EXTRACT_ROUTER", "nowhere.router"),
        ("LLM_EXTRACT_SCHEMA", 3),
        ("LLM_EXTRACT_PRICES", {"gpt-4o-mini": 0.15}),
        ("LLM_EXTRACT_MAX_RETRIES", -1),
    ],
)
def test_values_of_the_wrong_type_are_config_errors_naming_the_setting(name, value):
    with pytest.raises(ConfigError, match=f"^{name}"):
        make_config(**{name: value})


def test_an_s3_spool_reads_scrapys_aws_settings_and_stages_locally(tmp_path: Path) -> None:
    config = make_config(
        LLM_EXTRACT_SPOOL_DIR="s3://bucket/llm/spool/",
        LLM_EXTRACT_SPOOL_STAGING_DIR=str(tmp_path / "staging"),
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
        AWS_SECRET_ACCESS_KEY="very-secret-key",
        AWS_ENDPOINT_URL="http://127.0.0.1:9000",
        AWS_USE_SSL="False",
    )
    assert config.spool_store == "s3://bucket/llm/spool"
    assert config.spool_dir == tmp_path / "staging" / "crawl"  # where the crawl appends
    assert config.s3 is not None
    assert (config.s3.endpoint_url, config.s3.use_ssl) == ("http://127.0.0.1:9000", False)
    assert "very-secret-key" not in repr(config) and "AKIDEXAMPLE" not in repr(config)
    local = make_config(LLM_EXTRACT_SPOOL_DIR=str(tmp_path / "spool"))
    assert (local.spool_store, local.s3, local.spool_dir) == (None, None, tmp_path / "spool")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "LLM_EXTRACT_REASONING_EFFORT=hgh",
            "LLM_EXTRACT_REASONING_EFFORT must be None or one of none, minimal, low, medium,"
            " high, xhigh, max, got 'hgh'.",
        ),
        ("LLM_EXTRACT_SCHEMA={title: 1}", "LLM_EXTRACT_SCHEMA is not valid JSON"),
        (
            "LLM_EXTRACT_MODEL=gpt-5.1-codex",
            "LLM_EXTRACT_MODEL: gpt-5.1-codex is served by OpenAI's Responses API only, and this"
            " package sends chat completions",
        ),
        ("LLM_EXTRACT_SCHEMA=tiny.items.Nothing", "LLM_EXTRACT_SCHEMA = 'tiny.items.Nothing'"),
        (
            'LLM_EXTRACT_PRICES={"my-deploy": {"inpt": 0.15, "output": 0.6}}',
            "LLM_EXTRACT_PRICES['my-deploy']['inpt'] = 0.15 cannot be used: give numbers >= 0"
            " for input, output, cached_input, context_window",
        ),
        (
            'LLM_EXTRACT_PRICES={"gpt-4o-mini": {"input": "0,15"}}',
            "LLM_EXTRACT_PRICES['gpt-4o-mini']['input'] = '0,15' cannot be used",
        ),
        (
            'LLM_EXTRACT_SCHEMA={"type": "object"}',
            "LLM_EXTRACT_SCHEMA is unusable: The extraction schema must be an object with at"
            " least one property.",
        ),
    ],
)
def test_a_bad_value_from_the_command_line_stops_the_crawl_with_one_line(
    tmp_path, setting, message
):
    result = crawl(tmp_path, args=("-s", setting))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"[scrapy_llm_extract.startup] ERROR: {message}" in errors[0]
    assert "Traceback" not in result.stderr


def test_none_and_json_settings_can_be_given_on_the_command_line(tmp_path):
    """-s gives strings only: "None" (or "") is None where None is documented, a schema is JSON."""
    schema = '{"type": "object", "properties": {"name": {"type": "string"}}}'
    result = crawl(
        tmp_path,
        args=(
            *("-s", "LLM_EXTRACT_REASONING_EFFORT=None", "-s", "LLM_EXTRACT_OUTPUT_FIELD=None"),
            *("-s", "LLM_EXTRACT_SUBMIT_CHECK_DELAY=None", "-s", "LLM_EXTRACT_RPM="),
            *("-s", f"LLM_EXTRACT_SCHEMA={schema}", "-s", "LLM_EXTRACT_ROUTER=None"),
            *("-s", "LLM_EXTRACT_ROW_ID_FIELD=None"),
        ),
        items=1,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = make_config(
        LLM_EXTRACT_REASONING_EFFORT="None",
        LLM_EXTRACT_OUTPUT_FIELD="None",
        LLM_EXTRACT_SUBMIT_CHECK_DELAY="None",
        LLM_EXTRACT_RPM="",
        LLM_EXTRACT_SCHEMA=schema,
        LLM_EXTRACT_ROW_ID_FIELD="None",
        LLM_EXTRACT_EMULATOR_DIR="None",
    )
    assert config.reasoning_effort is None
    assert config.output_field is None
    assert config.submit_check_delay is None
    assert config.rpm is None
    assert config.row_id_field is None
    assert config.emulator_dir is None
    assert config.schema == json.loads(schema)


def test_a_reactor_the_package_cannot_await_on_stops_the_crawl_with_its_error_line(tmp_path):
    result = crawl(tmp_path, "TWISTED_REACTOR = 'twisted.internet.epollreactor.EPollReactor'\n")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "[scrapy_llm_extract" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].endswith(
        "[scrapy_llm_extract.startup] ERROR: scrapy-llm-extract awaits the OpenAI SDK on"
        " asyncio, but this crawl runs on another Twisted reactor. Set TWISTED_REACTOR ="
        ' "twisted.internet.asyncioreactor.AsyncioSelectorReactor" (Scrapy\'s default).'
    )
    assert "Spider opened" not in result.stderr
