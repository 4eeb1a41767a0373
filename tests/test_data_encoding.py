"""data.encoding (--encoding, ANOMALY_DATA_ENCODING): files in another encoding than UTF-8, said once. Excel's
"CSV" on Windows is Windows-1252 (`°C`, `µS`, `ä`); other tools write Latin-1 or Shift-JIS. Under "auto" (the
default) such a file is refused, as before, now naming the setting as the first fix (test_data_exports.py)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly.bundle import save_bundle
from anomaly.cli import main
from anomaly.config import ConfigError, DataConfig, ModelConfig, TrainConfig, build_config
from anomaly.data import load_series
from anomaly.errors import DataError, SchemaError
from anomaly.synthetic import SyntheticSpec, generate
from anomaly.training import train

KEYS = ("Kühler-ä", "Pumpe µ")
NAMES = {"sensor_1": "Temp °C", "sensor_2": "Leitf µS"}


def frame(n: int, seed: int):
    """Two series keyed by names with umlauts, features named with `°C` and `µS`."""
    parts = []
    for i, key in enumerate(KEYS):
        part = generate(SyntheticSpec(n_sensors=2, n_points=n, seed=seed + i)).rename(columns=NAMES)
        parts.append(part.drop(columns="anomaly_kind").assign(Gerät=key))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the UTF-8 file: its features are named `Temp °C` and `Leitf µS`."""
    path = tmp_path_factory.mktemp("enc") / "train.csv"
    frame(200, 1).to_csv(path, index=False)
    series, feats = load_series([path], DataConfig(key_column="Gerät"))
    assert feats == ["Temp °C", "Leitf µS"]
    result = train(
        series,
        feats,
        ModelConfig(window=4, hidden_size=4, num_layers=1),
        TrainConfig(epochs=1, batch_size=16, device="cpu", seed=0),
    )
    return save_bundle(result.bundle, path.with_name("model.pt"))


def write(path: Path, text: str, codec: str) -> Path:
    data = text.encode(codec)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("test.csv", "option"),
        ("test.csv.gz", "option"),
        ("test.csv", "environment"),
        ("test.csv", "pipeline"),
    ],
)
def test_a_windows_1252_file_replays_byte_for_byte_as_its_utf8_copy(model, tmp_path, name, how) -> None:
    """The same frame written in UTF-8 and in Windows-1252 (compressed too), the encoding said by --encoding,
    ANOMALY_DATA_ENCODING or the pipeline file: the same scores.csv, keys with `ä` and times and values alike.
    Before, the Windows-1252 file was refused (and --encoding was no option)."""
    data = frame(80, 7)
    data["anomaly"] = (data.index % 50 == 7).astype(
        int
    )  # the labels in a file of their own, keyed by `Gerät`
    text = data.drop(columns="anomaly").to_csv(index=False, sep=";", decimal=",")  # as German Excel writes it
    labels = data[["timestamp", "Gerät", "anomaly"]].to_csv(index=False, sep=";")
    for codec in ("utf8", "cp1252"):
        (tmp_path / codec).mkdir()
        write(tmp_path / codec / name, text, codec)
        write(tmp_path / codec / "labels.csv", labels, codec)
    common = ["replay", "--model", str(model), "--key-column", "Gerät", "--decimal", ",", "--no-plots"]
    runner = CliRunner()
    utf8, cp1252 = tmp_path / "utf8" / name, tmp_path / "cp1252" / name
    plain = runner.invoke(
        main,
        [
            *common,
            str(utf8),
            "--labels",
            str(utf8.with_name("labels.csv")),
            "--out",
            str(tmp_path / "out-utf8"),
        ],
    )
    assert plain.exit_code == 0, plain.output
    args = [*common, str(cp1252), "--labels", str(cp1252.with_name("labels.csv"))]
    args, env = [*args, "--out", str(tmp_path / "out-cp1252")], {}
    if how == "option":
        args += ["--encoding", "cp1252"]
    elif how == "environment":
        env["ANOMALY_DATA_ENCODING"] = "cp1252"
    else:
        (tmp_path / "pipeline.toml").write_text('[data]\nencoding = "cp1252"\n')
        args += ["--pipeline", str(tmp_path / "pipeline.toml")]
    got = runner.invoke(main, args, env=env)
    assert got.exit_code == 0, got.output
    scores = (tmp_path / "out-cp1252" / "scores.csv").read_bytes()
    assert scores == (tmp_path / "out-utf8" / "scores.csv").read_bytes()
    got_scores = pd.read_csv(io.BytesIO(scores))
    assert (set(got_scores["key"]), got_scores["label"].sum()) == (set(KEYS), 4)


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz"])
@pytest.mark.parametrize("codec", ["cp1252", "latin-1", "shift_jis"])
def test_lines_of_a_file_in_another_encoding_are_named_as_an_editor_shows_them(tmp_path, name, codec) -> None:
    """A refused cell and the lines of readings (rejections.jsonl) in a Windows-1252, Latin-1 or Shift-JIS file,
    plain or compressed, with a blank line in it: the lines an editor shows."""
    sensor = "温度" if codec == "shift_jis" else "Temp °C"
    body = f"timestamp;Gerät;{sensor}\r\n2023-11-14 10:00:00;Kühler;1,5\r\n\r\n2023-11-14 10:01:00;Kühler;oops\r\n"
    body = body if codec != "shift_jis" else body.replace("Gerät", "機器").replace("Kühler", "冷却器")
    path = write(tmp_path / name, body, codec)
    cfg = {"decimal": ",", "key_column": "機器" if codec == "shift_jis" else "Gerät", "encoding": codec}
    with pytest.raises(SchemaError, match=rf"column '{sensor}' line 4 holds 'oops'"):
        load_series([path], DataConfig(**cfg))
    write(path, body.replace("oops", "2,5") + "2023-11-14 10:02:00;x;3,5\r\n", codec)
    series, feats = load_series([path], DataConfig(**cfg))
    assert feats == [sensor]
    assert [(s.key, s.lines.tolist(), s.values.ravel().tolist()) for s in series] == [
        ("冷却器" if codec == "shift_jis" else "Kühler", [2, 4], [1.5, 2.5]),
        ("x", [5], [3.5]),
    ]


def test_bytes_that_are_no_text_in_the_given_encoding_are_one_line_naming_file_line_and_codec(
    tmp_path,
) -> None:
    """Windows-1252 bytes read as Shift-JIS or ASCII, a file without a byte-order mark read as UTF-16: one line
    naming the file, the line and the codec (the first two were scores of wrong text or a traceback)."""
    path = tmp_path / "e.csv"
    path.write_bytes("timestamp;a\r\n2023-11-14 10:00:00;1,5\r\nnote;Kühler\r\n".encode("cp1252"))
    fix = "set the file's encoding with --encoding (data.encoding), e.g. cp1252 for Excel's 'CSV' on Windows, or auto for UTF-8"
    for codec, where in (
        ("shift_jis", "on line 3 (byte 0xfc: 'note;K\ufffdhler')"),
        ("ascii", "on line 3 (byte 0xfc: 'note;K\ufffdhler')"),
        ("utf-16", "on line 1 (UTF-16 stream does not start with BOM)"),
    ):
        with pytest.raises(DataError) as err:
            load_series([path], DataConfig(decimal=",", encoding=codec))
        assert str(err.value) == f"cannot read {path} as CSV: it is not {codec} text {where}; {fix}"


@pytest.mark.parametrize("value", ["nope", "base64", "", " "])
def test_an_encoding_python_does_not_know_is_refused_naming_the_setting(value) -> None:
    """An unknown codec, or one that is no text encoding (base64 turns bytes into bytes), when the settings load."""
    with pytest.raises(ConfigError) as err:
        build_config(env={"ANOMALY_DATA_ENCODING": value})
    assert str(err.value).startswith(
        "data.encoding must be auto or a text encoding Python knows, e.g. cp1252, latin-1, shift_jis, utf-16; "
        f"got {value!r}"
    )


def test_the_encoding_is_read_from_the_pipeline_file_the_environment_and_the_option(tmp_path) -> None:
    assert build_config().data.encoding == "auto"
    assert build_config({"data": {"encoding": "latin-1"}}).data.encoding == "latin-1"
    assert build_config(env={"ANOMALY_DATA_ENCODING": "shift_jis"}).data.encoding == "shift_jis"
    got = CliRunner().invoke(main, ["train", str(tmp_path / "x.csv"), "--encoding", "nope"])
    assert got.exit_code == 2
    assert got.output.splitlines()[-1] == (
        "error: data.encoding must be auto or a text encoding Python knows, e.g. cp1252, latin-1, shift_jis, "
        "utf-16; got 'nope' (from option --encoding)"
    )
