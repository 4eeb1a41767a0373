from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.bundle import load_bundle, save_bundle
from anomaly.errors import BundleError, SchemaError
from anomaly.training import series_errors


def test_round_trip_gives_identical_scores(bundle, bundle_path, test_series, tmp_path) -> None:
    copy = load_bundle(save_bundle(bundle, tmp_path / "copy.pt"))
    x = bundle.scaler.transform(test_series.values)
    assert np.array_equal(series_errors(bundle.model, x), series_errors(copy.model, x))
    assert copy.features == bundle.features
    assert copy.calibration == bundle.calibration
    assert copy.meta["training_fingerprint"] == bundle.meta["training_fingerprint"]
    assert set(copy.meta) >= {"package_version", "created_at", "model_version", "training", "weights_sha256"}


def test_missing_and_extra_features_are_named(bundle) -> None:
    cols = [f for f in bundle.features if f != "sensor_2"] + ["humidity"]
    with pytest.raises(SchemaError) as info:
        bundle.check_columns(cols)
    assert info.value.missing == ["sensor_2"] and info.value.extra == ["humidity"]
    assert "missing sensor_2" in str(info.value) and "unexpected humidity" in str(info.value)


def test_truncated_bundle_is_a_one_line_error(bundle_path, tmp_path) -> None:
    data = bundle_path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as info:
        load_bundle(bad)
    assert "truncated or corrupted" in str(info.value) and "\n" not in str(info.value)


def test_flipped_weight_byte_is_caught_by_the_checksum(bundle, tmp_path) -> None:
    path = save_bundle(bundle, tmp_path / "b.pt")
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["weights"]))
    payload["weights"][name].view(-1)[0] += 1.0
    torch.save(payload, path)
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(path)


def test_not_a_bundle(tmp_path) -> None:
    p = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, p)
    with pytest.raises(BundleError, match="not an anomaly model bundle"):
        load_bundle(p)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing.pt")


def test_bundle_without_forecast_field_loads_as_window_scored(window_bundle, tmp_path) -> None:
    """Bundles written before the forecast head have no `architecture.forecast`: they load as
    reconstruction-only models and the engine scores them by window, as before."""
    import json

    from anomaly.config import EngineConfig
    from anomaly.engine import Engine

    path = save_bundle(window_bundle, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    del meta["architecture"]["forecast"]
    payload["meta"] = json.dumps(meta)
    torch.save(payload, path)
    old = load_bundle(path)
    assert old.arch == window_bundle.arch and not old.arch.forecast and old.model.forecaster is None
    assert Engine(old, EngineConfig()).unit == old.window


def test_architecture_is_recorded(bundle, tmp_path) -> None:
    meta = load_bundle(save_bundle(bundle, tmp_path / "b.pt")).metadata()
    assert meta["architecture"] == bundle.arch.to_json()
    assert meta["architecture"]["forecast"] is True and meta["scoring"] == "per_reading"


def test_unknown_bundle_format_is_named(bundle, tmp_path) -> None:
    path = save_bundle(bundle, tmp_path / "b.pt")
    payload = torch.load(path, weights_only=True)
    payload["format"] = "anomaly-bundle/9"
    torch.save(payload, path)
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert "anomaly-bundle/9" in str(info.value) and "anomaly-bundle/1" in str(info.value)


def test_an_unwritable_path_is_named_as_asked_not_by_its_temporary_file(bundle, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for target in (blocker / "m.pt", blocker / "deeper" / "m.pt"):  # the parent is a file: mkdir/mkstemp fail
        with pytest.raises(BundleError, match=r"^cannot write the model bundle .*m\.pt: ") as err:
            save_bundle(bundle, target)
        assert ".tmp" not in str(err.value) and err.value.path == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing half-written left behind


def _rewrite_meta(path, edit) -> None:
    """Edit a saved bundle's metadata in place, leaving its weights (and so their checksum) as they were."""
    import json

    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    payload["meta"] = json.dumps(edit(meta))
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda m: {**m, "scaler": {**m["scaler"], "scale": [0.0] + m["scaler"]["scale"][1:]}},
            "scaler scale is not positive for sensor_1",
        ),
        (
            lambda m: {**m, "scaler": {**m["scaler"], "mean": m["scaler"]["mean"][:-1]}},
            "scaler mean has {n1} values for {n} features",
        ),
        (
            lambda m: {**m, "features": m["features"][:-1]},
            "the architecture is for {n} features, the bundle names {n1}",
        ),
        (
            lambda m: {**m, "calibration": {**m["calibration"], "reference_error": None}},
            "calibration reference_error is None, not a finite number",
        ),
    ],
)
def test_metadata_that_would_score_wrongly_is_refused_when_read(bundle, tmp_path, edit, reason) -> None:
    """The checksum covers the weights only: a scale of 0 in the metadata made every reading score ~1e23 and
    alert, without a word; a scaler for another number of features failed mid-stream."""
    from click.testing import CliRunner

    from anomaly.cli import main

    path = save_bundle(bundle, tmp_path / "b.pt")
    _rewrite_meta(path, edit)
    n = len(bundle.features)
    want = f"{path}: bundle does not describe a valid model ({reason.format(n=n, n1=n - 1)})"
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert str(info.value) == want
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {want}\n")


def test_metadata_or_weights_of_the_wrong_type_are_a_one_line_error(bundle, tmp_path) -> None:
    """A payload that unpickles but holds a list where the metadata object or the weights dict belongs was an
    AttributeError traceback (and would have stopped a daemon's hot reload, which keeps the old model only on
    AnomalyError)."""
    path = save_bundle(bundle, tmp_path / "b.pt")
    _rewrite_meta(path, lambda m: [1, 2])
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert str(info.value) == f"{path}: bundle metadata is corrupted (not a JSON object)"
    path = save_bundle(bundle, tmp_path / "w.pt")
    payload = torch.load(path, weights_only=True)
    payload["weights"] = [1]
    torch.save(payload, path)
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    assert str(info.value) == f"{path}: bundle weights are corrupted (not named tensors)"


def test_a_zip_archive_that_is_not_a_bundle_is_named_as_such(bundle_path, tmp_path) -> None:
    """A zip of something else (a bundle zipped for transfer, say) was 'file is truncated or corrupted
    ([enforce fail at inline_container.cc:180] ...)', which sends an operator looking for a damaged download."""
    import zipfile

    zipped = tmp_path / "model.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(bundle_path, "model.pt")
    with pytest.raises(BundleError) as info:
        load_bundle(zipped)
    assert (
        str(info.value)
        == f"{zipped} is not an anomaly model bundle (a zip archive that torch.save did not write)"
    )
    data = bundle_path.read_bytes()  # a damaged bundle is still reported as one
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated or corrupted"):
        load_bundle(tmp_path / "half.pt")


def test_an_empty_model_file_says_it_is_empty(tmp_path) -> None:
    """An empty file (a copy to a full disk) was 'not a PyTorch archive' as a bundle and, named .onnx, 'an ONNX
    model without anomaly bundle metadata': an empty protobuf parses as an empty model."""
    for name, what in (("model.pt", "an anomaly model bundle"), ("model.onnx", "an ONNX model")):
        empty = tmp_path / name
        empty.write_bytes(b"")
        with pytest.raises(BundleError) as info:
            load_bundle(empty)
        assert str(info.value) == f"{empty} is an empty file, not {what}"


def test_a_long_library_reason_is_cut_at_a_sentence_not_mid_word() -> None:
    """A truncated bundle's line ended '... This is an internal miniz error. If yo)': torch's message cut at 120
    characters."""
    from anomaly.bundle import short_reason

    torch_says = (
        "PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
        "miniz error. If you are seeing this error, please report it"
    )
    assert short_reason(torch_says) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
        "miniz error."
    )
    assert short_reason("x" * 130) == "x" * 120 + "..."
    assert short_reason("short. reason") == "short. reason"
