"""settings.py: precedence, coercion, validation messages, and that it is a leaf."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import settings as settings_module
from errors import ConfigurationError
from settings import Settings, config_section, load_settings, read_config_document

PROJECT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, document: Any) -> Path:
    path = folder / "lambda_config.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        {"function": {"memory_mb": 512}, "settings": {"max_redirects": 3, "url_expiry_seconds": 7}},
    )


# --------------------------------------------------------------------------- precedence


def test_default_applies_when_no_source_names_the_setting(tmp_path: Path) -> None:
    loaded = load_settings(environ={}, config_path=tmp_path / "absent.json")
    assert loaded == Settings()
    assert loaded.max_redirects == 5


def test_config_file_beats_default(config: Path) -> None:
    loaded = load_settings(environ={}, config_path=config)
    assert loaded.max_redirects == 3
    assert loaded.url_expiry_seconds == 7


def test_environment_beats_config_file(config: Path) -> None:
    loaded = load_settings(environ={"MAX_REDIRECTS": "1"}, config_path=config)
    assert loaded.max_redirects == 1
    assert loaded.url_expiry_seconds == 7  # still from the file


def test_argument_beats_environment_and_config_file(config: Path) -> None:
    loaded = load_settings({"max_redirects": 0}, environ={"MAX_REDIRECTS": "1"}, config_path=config)
    assert loaded.max_redirects == 0


def test_environment_names_are_the_upper_case_field_names(tmp_path: Path) -> None:
    environ = {f.name.upper(): "" for f in dataclasses.fields(Settings)}
    # Lower-case names are not read from the environment.
    loaded = load_settings(environ={"max_redirects": "1"}, config_path=tmp_path / "x.json")
    assert loaded.max_redirects == 5
    assert "MAX_DOWNLOAD_BYTES" in environ


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        (
            "allowed_hosts",
            "a.example, *.b.example ,10.0.0.0/8",
            ("a.example", "*.b.example", "10.0.0.0/8"),
        ),
        ("allowed_hosts", "", ()),
        ("output_bucket", "  ", None),
        ("trigger_max_width", "", None),
        ("trigger_max_width", "640", 640),
        ("connect_timeout_seconds", "2.5", 2.5),
        ("max_download_bytes", "1024", 1024),
    ],
)
def test_environment_values_are_coerced_to_the_field_type(
    tmp_path: Path, name: str, raw: str, expected: Any
) -> None:
    loaded = load_settings(environ={name.upper(): raw}, config_path=tmp_path / "x.json")
    assert getattr(loaded, name) == expected


def test_config_file_lists_become_tuples(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"settings": {"allowed_buckets": ["scans", "archive"]}})
    assert load_settings(environ={}, config_path=path).allowed_buckets == ("scans", "archive")


# --------------------------------------------------------------------------- refusals


def test_secrets_are_refused_from_the_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"settings": {"r2_secret_access_key": "s3cr3t-value"}})
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={}, config_path=path)
    assert "R2_SECRET_ACCESS_KEY" in caught.value.message
    assert "s3cr3t-value" not in caught.value.message


def test_secrets_never_appear_in_repr() -> None:
    loaded = load_settings(
        {"r2_access_key_id": "AKIDVALUE", "r2_secret_access_key": "SECRETVALUE"}, environ={}
    )
    assert "AKIDVALUE" not in repr(loaded) and "SECRETVALUE" not in repr(loaded)


def test_unknown_settings_are_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"settings": {"max_redirect": 2}})
    with pytest.raises(ConfigurationError, match="unknown setting\\(s\\): max_redirect"):
        load_settings(environ={}, config_path=path)
    with pytest.raises(ConfigurationError, match="unknown setting\\(s\\): nope"):
        load_settings({"nope": 1}, environ={}, config_path=path)


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("max_download_bytes", "0", "must be greater than 0"),
        ("download_retries", "-1", "must not be negative"),
        ("default_quality", "101", "must be between 1 and 100"),
        ("default_output_format", "tiff", "must be one of jpg, jpeg, png, webp"),
        ("log_level", "LOUD", "must be one of DEBUG"),
        ("allowed_hosts", "internal.corp/path", "must list host names"),
        ("s3_endpoint_url", "http://KEY:SECRET@minio.internal:9000", "must be an http"),
        ("r2_endpoint_url", "ftp://internal.example", "must be an http"),
        ("requests_ca_bundle", "/etc/internal-ca/missing.pem", "existing CA bundle"),
        ("watch_bucket", "Internal_Bucket", "must be an S3 bucket name"),
        ("trigger_frames", "some", "must be one of first, all"),
        ("trigger_max_width", "0", "must be between 1 and 16384"),
        ("batch_workers", "0", "must be greater than 0"),
        ("temp_root", "", "must name a folder"),
    ],
)
def test_validation_names_the_setting_and_never_its_value(
    tmp_path: Path, name: str, value: str, rule: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={name.upper(): value}, config_path=tmp_path / "x.json")
    message = caught.value.message
    assert message.startswith(f"setting {name.upper()} ")
    assert rule in message
    if len(value) > 3:  # short numbers also occur in the rule itself
        assert value not in message
    assert caught.value.status == 500 and caught.value.code == "configuration_error"


@pytest.mark.parametrize("value", ["abc", "1.5e", "twelve"])
def test_type_errors_name_the_setting_and_source_only(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={"MAX_REDIRECTS": value}, config_path=tmp_path / "x.json")
    assert caught.value.message == (
        "setting MAX_REDIRECTS from the environment must be of type int"
    )
    path = write_config(tmp_path, {"settings": {"max_redirects": value}})
    with pytest.raises(ConfigurationError, match=r"from lambda_config\.json must be of type int"):
        load_settings(environ={}, config_path=path)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().max_redirects = 1  # type: ignore[misc]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigurationError, match="setting MAX_PIXEL_BYTES must be greater"):
        Settings(max_pixel_bytes=0)


# --------------------------------------------------------------------------- the config file


def test_config_document_and_sections(config: Path) -> None:
    assert read_config_document(config)["function"] == {"memory_mb": 512}
    assert config_section("function", config) == {"memory_mb": 512}
    assert config_section("absent", config) == {}
    assert read_config_document(config.with_name("missing.json")) == {}


def test_invalid_json_names_the_place_not_the_text(tmp_path: Path) -> None:
    path = tmp_path / "lambda_config.json"
    path.write_text('{"settings": {"allowed_hosts": secret-internal-host}}', encoding="utf-8")
    with pytest.raises(ConfigurationError) as caught:
        read_config_document(path)
    assert caught.value.message.startswith("lambda_config.json is not valid JSON (line 1")
    assert "secret-internal-host" not in caught.value.message


@pytest.mark.parametrize("document", [[1, 2], "text", {"settings": [1]}])
def test_config_of_the_wrong_shape_is_refused(tmp_path: Path, document: Any) -> None:
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigurationError, match=r"lambda_config\.json"):
        load_settings(environ={}, config_path=path)


def test_the_shipped_config_file_is_valid() -> None:
    loaded = load_settings(environ={})
    assert isinstance(loaded, Settings)
    assert set(config_section("settings")) <= {f.name for f in dataclasses.fields(Settings)}


def test_get_settings_builds_once() -> None:
    settings_module.get_settings.cache_clear()
    try:
        assert settings_module.get_settings() is settings_module.get_settings()
    finally:
        settings_module.get_settings.cache_clear()


# --------------------------------------------------------------------------- a leaf


def test_settings_imports_nothing_of_ours_but_errors() -> None:
    project = {p.stem for p in PROJECT.glob("*.py")}
    tree = ast.parse((PROJECT / "settings.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & project == {"errors"}
