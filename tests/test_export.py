"""int8 and ONNX exports: the files load like any bundle and score through the engine."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from anomaly.bundle import load_bundle, read_metadata, save_bundle
from anomaly.cli import main
from anomaly.config import EngineConfig
from anomaly.engine import Engine, Event
from anomaly.export import ONNX_TOLERANCE, export_onnx, to_int8
from anomaly.model import reading_errors
from anomaly.training import series_errors


def scores(bundle, series, block: int = 37) -> tuple[np.ndarray, np.ndarray, list[str]]:
    engine = Engine(bundle, EngineConfig())
    errors, smoothed, versions = [], [], []
    for lo in range(0, len(series), block):
        out = engine.process([Event("k", series.timestamps[lo : lo + block], series.values[lo : lo + block])])
        errors += [w.errors for w in out.windows]
        smoothed += [w.scores for w in out.windows]
        versions += [w.model_version for w in out.windows]
    return np.concatenate(errors), np.concatenate(smoothed), versions


def test_int8_bundle_round_trips_bit_for_bit_and_stays_close_to_float(bundle, test_series, tmp_path):
    q = to_int8(bundle)
    path = save_bundle(q, tmp_path / "model-int8.pt")
    meta, weights = read_metadata(path)
    assert meta["quantization"] == {
        "scheme": "weight_only",
        "dtype": "qint8",
        "compute": "float32",
        "modules": ["LSTM", "Linear"],
    }
    assert meta["export"] == {"format": "int8", "parent_version": bundle.version}
    assert weights["encoder.weight_ih_l0"].dtype == torch.int8
    assert weights["head.weight"].dtype == torch.int8
    loaded = load_bundle(path)
    assert loaded.version == f"{bundle.version}-int8"
    err_mem, sc_mem, _ = scores(q, test_series)
    err_file, sc_file, versions = scores(loaded, test_series)
    assert np.array_equal(err_mem, err_file) and np.array_equal(sc_mem, sc_file)
    assert set(versions) == {loaded.version}
    err_f32, _, _ = scores(bundle, test_series)
    assert err_f32.shape == err_file.shape
    rel = np.abs(err_file - err_f32).mean() / err_f32.mean()
    assert 0 < rel < 0.05  # int8 changes the numbers (it is quantised) but only slightly


def key_errors(bundle, calls: list[list[Event]], key: str = "k") -> np.ndarray:
    """The point errors of `key` when the engine is fed `calls` (each one `process` call of events)."""
    engine = Engine(bundle, EngineConfig())
    return np.concatenate([w.errors for c in calls for w in engine.process(c).windows if w.key == key])


def test_an_int8_bundle_scores_a_key_the_same_whatever_shares_its_call(bundle, test_series, tmp_path):
    """Dynamic quantisation took each call's activation scale from the whole input, so a key's errors moved
    with a 20x larger key in the same call and with how its readings were grouped (README said replay predicted
    the daemon only to within that noise). int8 is now weights only, scored in float32: bit for bit."""
    q = load_bundle(save_bundle(to_int8(bundle), tmp_path / "q.pt"))
    ts, values, n = test_series.timestamps, test_series.values, 320
    alone = key_errors(q, [[Event("k", ts[lo : lo + 32], values[lo : lo + 32])] for lo in range(0, n, 32)])
    big = values * 20.0
    shared = key_errors(
        q,
        [
            [
                Event("k", ts[lo : lo + 32], values[lo : lo + 32]),
                Event("big", ts[lo : lo + 32], big[lo : lo + 32]),
            ]
            for lo in range(0, n, 32)
        ],
    )
    one_by_one = key_errors(q, [[Event("k", ts[i : i + 1], values[i : i + 1])] for i in range(n)])
    assert len(alone) == n  # every reading is scored (forecast head)
    assert np.array_equal(alone, shared)
    assert np.array_equal(alone, one_by_one)


def _old_int8_weights(model) -> dict[str, torch.Tensor]:
    """What an int8 bundle held before session 17: `quantize_dynamic`'s packed modules as plain tensors (the
    code that wrote them, kept here to make such a file)."""
    import copy
    import warnings

    from torch import nn
    from torch.ao.nn.quantized import dynamic as nnqd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.LSTM, nn.Linear}, dtype=torch.qint8
        )
        out = {}
        for name, module in qm.named_modules():
            if isinstance(module, nnqd.Linear):
                parts = {"weight": module.weight(), "bias": module.bias()}
            elif isinstance(module, nnqd.LSTM):
                wb = module._weight_bias()
                parts = {**wb["weight"], **wb["bias"]}
            else:
                continue
            for pname, t in parts.items():
                key = f"{name}.{pname}"
                if t.is_quantized:
                    out[key] = t.int_repr().clone()
                    out[key + ".scale"] = torch.tensor(float(t.q_scale()), dtype=torch.float64)
                    out[key + ".zero_point"] = torch.tensor(int(t.q_zero_point()), dtype=torch.int64)
                else:
                    out[key] = t.detach().clone()
    return out


def test_an_int8_bundle_of_the_dynamic_scheme_still_loads_and_scores_as_a_new_one(
    bundle, test_series, tmp_path
):
    """Bundles exported before session 17 say scheme "dynamic" and hold the same int8 tensors and scales as a
    new export; they load, and score bit for bit like the new one."""
    import json

    from anomaly.bundle import FORMAT, _weights_digest

    new_path = save_bundle(to_int8(bundle), tmp_path / "new.pt")
    new_meta, new_weights = read_metadata(new_path)
    old_weights = _old_int8_weights(bundle.model)
    assert sorted(old_weights) == sorted(new_weights)
    assert all(
        torch.equal(old_weights[k], new_weights[k]) for k in old_weights
    )  # the same numbers are stored
    old_meta = {
        **new_meta,
        "quantization": {"scheme": "dynamic", "dtype": "qint8", "modules": ["LSTM", "Linear"]},
    }
    old_meta["weights_sha256"] = _weights_digest(old_weights)
    old_path = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "meta": json.dumps(old_meta), "weights": old_weights}, old_path)
    old = load_bundle(old_path)
    assert old.meta["quantization"]["scheme"] == "dynamic"
    err_old, sc_old, _ = scores(old, test_series)
    err_new, sc_new, _ = scores(load_bundle(new_path), test_series)
    assert np.array_equal(err_old, err_new) and np.array_equal(sc_old, sc_new)
    assert read_metadata(save_bundle(old, tmp_path / "again.pt"))[1].keys() == old_weights.keys()
    for path, older in ((new_path, ""), (old_path, "; exported as dynamic quantisation by an older version")):
        shown = CliRunner().invoke(main, ["inspect", str(path)]).stdout
        assert f"quantization:    int8 weights (one scale per tensor), scored in float32{older}\n" in shown


def test_int8_of_an_int8_bundle_is_a_one_line_error(bundle, tmp_path):
    path = save_bundle(to_int8(bundle), tmp_path / "q.pt")
    result = CliRunner().invoke(
        main, ["export", str(path), "--format", "int8", "-o", str(tmp_path / "qq.pt")]
    )
    assert result.exit_code == 2
    assert result.stderr == f"error: model {bundle.version}-int8 is already quantised\n"


def test_onnx_export_matches_pytorch_within_tolerance_through_the_engine(bundle, test_series, tmp_path):
    path, diff = export_onnx(bundle, tmp_path / "model.onnx")
    assert diff <= ONNX_TOLERANCE
    onnx_bundle = load_bundle(path)
    assert onnx_bundle.features == bundle.features
    assert onnx_bundle.calibration == bundle.calibration
    assert onnx_bundle.arch == bundle.arch
    assert onnx_bundle.version == f"{bundle.version}-onnx"
    err_pt, sc_pt, _ = scores(bundle, test_series)
    err_ox, sc_ox, versions = scores(onnx_bundle, test_series)
    assert err_ox.shape == err_pt.shape
    assert np.abs(err_ox - err_pt).max() <= 1e-5
    assert np.abs(sc_ox - sc_pt).max() <= 1e-4  # scores are errors / a small reference, EWMA-smoothed
    assert set(versions) == {onnx_bundle.version}
    # the stateful step itself: a whole series window by window equals PyTorch's streaming errors
    x = bundle.scaler.transform(test_series.values)
    w = bundle.window
    n = len(x) // w * w
    recon = []
    state = onnx_bundle.model.initial_state(1)
    for lo in range(0, n, w):
        xt = torch.from_numpy(x[None, lo : lo + w])
        out, state = onnx_bundle.model(xt, state)
        recon.append(reading_errors(out, xt)[0].numpy())
    assert np.abs(np.concatenate(recon) - series_errors(bundle.model, x)).max() <= 1e-5


def test_export_command_writes_both_formats(bundle_path, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    result = runner.invoke(main, ["export", str(bundle_path), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out} (onnx, model version ")
    assert "validated with onnxruntime: max |ONNX - PyTorch| = " in result.stdout
    result = runner.invoke(main, ["export", str(bundle_path), "--format", "int8"])
    assert result.exit_code == 0, result.output
    assert load_bundle(bundle_path.with_name("model-int8.pt")).meta["quantization"]["dtype"] == "qint8"


def test_a_damaged_onnx_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="cannot read ONNX model"):
        load_bundle(bad)


def test_an_onnx_export_can_be_inspected_but_not_exported_again(bundle_path, tmp_path):
    """`anomaly inspect model.onnx` said 'not an anomaly model bundle (not a PyTorch archive)', although replay
    and consume take it; exporting it again said 'not a lstm_autoencoder baseline'."""
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    assert (
        runner.invoke(main, ["export", str(bundle_path), "--format", "onnx", "-o", str(out)]).exit_code == 0
    )
    pt, onnx = (runner.invoke(main, ["inspect", str(p)]) for p in (bundle_path, out))
    assert pt.exit_code == onnx.exit_code == 0, onnx.output
    pt_lines, onnx_lines = pt.stdout.splitlines(), onnx.stdout.splitlines()
    assert onnx_lines[0] == pt_lines[0] + "-onnx"  # model version
    assert onnx_lines[1:-1] == pt_lines[1:]  # features, architecture, training, calibration alike
    assert onnx_lines[-1].startswith("export:          format onnx, opset 17, parent_version ")
    for fmt in ("int8", "onnx"):
        again = runner.invoke(main, ["export", str(out), "--format", fmt])
        assert again.exit_code == 2 and again.stderr == (
            f"error: {out} is an ONNX export already; export from the bundle it came from (a .pt file)\n"
        )


def test_export_refuses_a_name_no_command_reads_back(bundle_path, tmp_path):
    """ONNX written as m.pt (or without .onnx) was 'not a PyTorch archive' to every command, and an int8
    bundle written as m.onnx 'cannot read ONNX model': the commands pick the runtime by the name."""
    runner = CliRunner()
    for fmt, name, hint in (("onnx", "m.pt", "m.onnx"), ("onnx", "m", "m.onnx"), ("int8", "m.onnx", "m.pt")):
        out = tmp_path / name
        result = runner.invoke(main, ["export", str(bundle_path), "--format", fmt, "-o", str(out)])
        assert result.exit_code == 2 and result.stderr.startswith(f"error: {out}: an ")
        assert result.stderr.endswith(f"(e.g. -o {tmp_path / hint})\n") and not out.exists()
    result = runner.invoke(main, ["export", str(bundle_path), "--format", "int8", "-o", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output  # a bundle needs no suffix
    assert load_bundle(tmp_path / "m").meta["quantization"]


def test_the_name_suggested_for_an_int8_export_is_not_the_model_itself(bundle_path, tmp_path):
    """`export model.pt --format int8 -o model.onnx` suggested `-o model.pt`: the model being exported, which the
    next try then refused."""
    model = tmp_path / "model.pt"
    model.write_bytes(bundle_path.read_bytes())
    out = tmp_path / "model.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(model), "--format", "int8", "-o", str(out)])
    suggested = tmp_path / "model-int8.pt"
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {out}: an int8 export is a model bundle, but a name ending .onnx is read as ONNX "
        f"(e.g. -o {suggested})\n",
    )
    again = runner.invoke(main, ["export", str(model), "--format", "int8", "-o", str(suggested)])
    assert again.exit_code == 0, again.output
    assert model.read_bytes() == bundle_path.read_bytes() and load_bundle(suggested).meta["quantization"]


def test_export_refuses_to_overwrite_the_model_it_exports(bundle_path, tmp_path):
    """`export model.pt --format int8 -o model.pt` replaced the float model with its int8 export."""
    model = tmp_path / "model.pt"
    model.write_bytes(bundle_path.read_bytes())
    before = model.read_bytes()
    result = CliRunner().invoke(main, ["export", str(model), "--format", "int8", "-o", str(model)])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {model} is the model being exported; write the export to another file (-o)\n"
    )
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("scores.csv", b"timestamp,sensor_1\n0,1.5\n", "text"),
        ("pipeline.toml", '[engine]\nthreshold = "static"  # \u00b0C\n'.encode(), "text"),
        ("data.csv.gz", b"\x1f\x8b\x08\x00rest", "gzip"),
        ("scores.parquet", b"PAR1\x00\x01rest", "Parquet"),
    ],
)
def test_export_refuses_to_replace_a_file_of_data(bundle_path, tmp_path, name, content, kind):
    """A mistyped -o naming a data file (`-o scores.csv`) replaced it with the export, without a word; a model
    bundle or an ONNX file of that name is replaced as before."""
    target = tmp_path / name
    target.write_bytes(content)
    result = CliRunner().invoke(main, ["export", str(bundle_path), "--format", "int8", "-o", str(target)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: cannot write the export {target}: it exists and holds {kind} data, not a model (writing would "
        "replace the data); remove it first or name another file with --out\n"
    )
    assert target.read_bytes() == content
    bundle = tmp_path / "old-int8.pt"
    bundle.write_bytes(bundle_path.read_bytes())
    again = CliRunner().invoke(main, ["export", str(bundle_path), "--format", "int8", "-o", str(bundle)])
    assert again.exit_code == 0, again.output
    assert load_bundle(bundle).meta["quantization"]


def test_onnx_export_to_an_unwritable_place_names_the_file(bundle_path, tmp_path):
    """A folder that is a file ended in a FileExistsError traceback (save_bundle said it in one line)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "m.onnx"
    result = CliRunner().invoke(main, ["export", str(bundle_path), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: cannot write the ONNX model {out}: ")
    assert len(result.stderr.splitlines()) == 1


def test_onnx_metadata_that_would_score_wrongly_is_refused_when_loaded(bundle, tmp_path):
    """An ONNX export's embedded metadata gets the checks a bundle's gets: a scale of 0 was loaded and scored
    every reading as ~1e23; metadata without a scaler was a KeyError traceback (a daemon's hot reload, which
    keeps the old model only on AnomalyError, would have stopped)."""
    import json

    import onnx

    from anomaly.errors import BundleError
    from anomaly.export import ONNX_META_KEY

    path, _ = export_onnx(bundle, tmp_path / "model.onnx")
    for name, edit, reason in (
        (
            "zero.onnx",
            lambda m: m["scaler"]["scale"].__setitem__(0, 0.0),
            "scaler scale is not positive for sensor_1",
        ),
        ("noscaler.onnx", lambda m: m.pop("scaler"), "no scaler"),
    ):
        proto = onnx.load(str(path))
        entry = next(e for e in proto.metadata_props if e.key == ONNX_META_KEY)
        meta = json.loads(entry.value)
        edit(meta)
        entry.value = json.dumps(meta)
        bad = tmp_path / name
        bad.write_bytes(proto.SerializeToString())
        with pytest.raises(BundleError) as info:
            load_bundle(bad)
        assert str(info.value) == f"{bad}: bundle does not describe a valid model ({reason})"


def test_exporting_a_missing_onnx_file_says_not_found(tmp_path):
    """`anomaly export typo.onnx` said 'typo.onnx is an ONNX export already' of a file that does not exist."""
    missing = tmp_path / "typo.onnx"
    result = CliRunner().invoke(
        main, ["export", str(missing), "--format", "int8", "-o", str(tmp_path / "q.pt")]
    )
    assert (result.exit_code, result.stderr) == (2, f"error: model bundle not found: {missing}\n")


def test_an_onnx_export_does_not_claim_its_parents_weight_checksum(bundle, tmp_path):
    """`anomaly inspect --json model.onnx` showed `weights_sha256`, the checksum of the float bundle's weights,
    which nothing in the ONNX file matches (an int8 bundle's is its own, recomputed when saved)."""
    import json

    path, _ = export_onnx(bundle, tmp_path / "model.onnx")
    result = CliRunner().invoke(main, ["inspect", "--json", str(path)])
    meta = json.loads(result.stdout)
    assert "weights_sha256" not in meta
    assert meta["export"] == {"format": "onnx", "opset": 17, "parent_version": bundle.version}


def test_without_the_export_extra_replay_of_an_onnx_file_says_what_needs_it(
    bundle, bundle_path, tmp_path, monkeypatch
):
    """Without onnxruntime, `replay -m model.onnx` said 'ONNX export needs the optional packages ...': the user
    was not exporting anything. Reading names the file; exporting still says export."""
    path, _ = export_onnx(bundle, tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, as where the extra is not installed
    # the distribution is not on PyPI: 'pip install anomaly[export]' would fetch another project's package
    extra = (
        "needs the optional packages onnx and onnxruntime: pip install -c deploy/constraints.txt -e '.[export]' "
        "in the anomaly checkout\n"
    )
    data = tmp_path / "data.csv"
    data.write_text("timestamp,a\n0,1\n")
    read = CliRunner().invoke(main, ["replay", str(data), "-m", str(path), "-o", str(tmp_path / "r")])
    assert (read.exit_code, read.output) == (2, f"error: reading the ONNX model {path} {extra}")
    made = CliRunner().invoke(
        main, ["export", str(bundle_path), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]
    )
    assert (made.exit_code, made.output) == (2, f"error: ONNX export {extra}")
