"""An operator's walk of the settings' layers (pipeline file < ANOMALY_* variables < options): the file itself,
and what each layer makes of a value."""

from __future__ import annotations

import pytest

from anomaly.config import build_config, load_config, read_toml
from anomaly.errors import ConfigError

PIPELINE = '[engine]\nthreshold = "static"\n[model]\nwindow = 8\n'


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_pipeline_file_saved_as_utf16_with_its_byte_order_mark_loads(tmp_path, encoding) -> None:
    """Windows PowerShell 5's `>` and `Out-File` write UTF-16 with a byte-order mark (Notepad calls it "Unicode"):
    such a file was refused as "not UTF-8 text"; CSV files in it are read as UTF-16 too."""
    toml = tmp_path / "p.toml"
    toml.write_bytes(("\ufeff" + PIPELINE).encode(encoding))  # "utf-16": the mark and the machine's order
    assert read_toml(toml) == {"engine": {"threshold": "static"}, "model": {"window": 8}}
    assert load_config(toml, env={}).model.window == 8


@pytest.mark.parametrize(
    "content",
    [PIPELINE.encode("utf-16-le"), PIPELINE.encode("utf-16-be"), b"\x00\x01\x02\x03"],
    ids=["utf-16-le", "utf-16-be", "binary"],
)
def test_a_pipeline_file_holding_nul_characters_says_so_in_one_line(tmp_path, content) -> None:
    """UTF-16 without a byte-order mark is valid UTF-8, a NUL beside each character: it was "not valid TOML: Invalid
    initial character for a key part (at line 1, column 2)", which pointed at a line that looked right."""
    toml = tmp_path / "p.toml"
    toml.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_toml(toml)
    assert str(info.value) == (
        f"pipeline file {toml} holds NUL characters, as UTF-16 text without a byte-order mark (or a file that is "
        "not text) does: save it as UTF-8"
    )


def test_a_pipeline_file_marked_utf16_that_does_not_decode_says_utf16(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_bytes(b"\xff\xfe" + "[model]\n".encode("utf-16-le") + b"\x00\xd8]\x00")  # a lone surrogate
    with pytest.raises(ConfigError) as info:
        read_toml(toml)
    assert str(info.value) == f"pipeline file {toml} is not UTF-16 text"


def test_a_utf32_pipeline_file_is_still_refused_as_not_utf8(tmp_path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_bytes(PIPELINE.encode("utf-32"))
    with pytest.raises(ConfigError) as info:
        read_toml(toml)
    assert str(info.value) == f"pipeline file {toml} is not UTF-8 text"


def test_a_variable_naming_a_section_and_no_setting_says_so() -> None:
    """ANOMALY_ENGINE_ (a name cut short in a manifest) was "unknown setting engine.; valid settings: ..."."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"ANOMALY_METRICS_": "9108"})
    assert str(info.value) == (
        "environment variable ANOMALY_METRICS_ names no setting: expected ANOMALY_METRICS_<FIELD> with FIELD one "
        "of: host, port"
    )


@pytest.mark.parametrize(
    ("value", "kind"), [(["hunter2"], "list"), ({"p": "hunter2"}, "dict"), (True, "bool")]
)
def test_a_password_of_the_wrong_type_is_refused_without_printing_it(value, kind) -> None:
    """`sasl_password = ["hunter2"]` was "kafka.sasl_password must be text, got ['hunter2']": the secret in the
    error line, which the README says is never printed."""
    with pytest.raises(ConfigError) as info:
        build_config({"kafka": {"sasl_password": value}}, toml_source="pipeline file p.toml")
    assert str(info.value) == (
        f"kafka.sasl_password must be text, got a {kind} (not shown: a secret) (from pipeline file p.toml)"
    )
