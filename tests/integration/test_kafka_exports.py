"""`anomaly consume -m model.onnx` and `-m model-int8.pt` (README, Export: int8 and ONNX): the daemon scores and
alerts exactly as the replay loop does with the same file. (An int8 bundle did not, bit for bit, until session
17: dynamic quantisation took each call's activation scale from the whole batch; its weights are now
dequantised at load and scored in float32.)"""

from __future__ import annotations

import pytest
from conftest import http_status, replay_expected, terminate, wait_for

from anomaly.bundle import load_bundle
from anomaly.export import export

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["onnx", "int8"])
def test_the_daemon_scores_an_export_as_replay_does(kafka_env, stream, tiny_model, fmt):
    _, series = stream
    _, bundle = tiny_model
    out = kafka_env.workdir / ("tiny.onnx" if fmt == "onnx" else "tiny-int8.pt")
    export(bundle, fmt, out)
    exported = load_bundle(out)
    names = kafka_env.names(partitions=2)
    ends = kafka_env.produce(names.input, series, bundle.features)
    proc, port = kafka_env.start(names, "--checkpoint-interval", "0.5", model=out)
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "daemon ready")
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    expected = replay_expected(exported, series)
    windows = kafka_env.windows(names.scores)
    assert {w["model_version"] for w in windows.values()} == {f"{bundle.version}-{fmt}"}
    assert windows == expected.windows
    assert kafka_env.alert_ids(names.alerts) == expected.alert_ids and expected.alert_ids
