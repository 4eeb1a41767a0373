"""Two pipelines (consumer groups) on one cluster, sharing the output topics whose default names are the same for
every group (anomaly-alerts, anomaly-dead-letters): what one pipeline's lifecycle commands read of the other's."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import terminate_all

from anomaly.bundle import read_metadata
from anomaly.cli import main

FAST = ("--checkpoint-interval", "0.3")


def test_retrain_of_one_pipeline_leaves_out_only_its_own_alerts_and_dead_letters_on_shared_topics(
    kafka_env, stream, tiny_model, tmp_path, monkeypatch
):
    """Pipeline A is run twice on one input topic: alone with output topics of its own, and as a group beside
    two other pipelines writing to the same alerts and dead-letter topics: B alerting far more (a lower
    threshold), C refusing every message (a message size limit below every message's). A retrain of A from the
    shared topics must train on exactly what a retrain from A's own topics does. Before, it left out B's alert
    spans and every message C dead-lettered ("too little normal data")."""
    model_path, bundle = tiny_model
    _, series = stream
    own = kafka_env.names(partitions=2)
    shared = kafka_env.names(partitions=1)  # its alerts and dead-letter topics are the shared ones
    shared.input = own.input
    ends = kafka_env.produce(own.input, series, bundle.features)
    b, c = kafka_env.names(partitions=1), kafka_env.names(partitions=1)
    for other in (b, c):
        other.input, other.alerts, other.dead = own.input, shared.alerts, shared.dead
    procs = [
        kafka_env.start(own, *FAST, log_name="a-own")[0],
        kafka_env.start(shared, *FAST, log_name="a-shared")[0],
        kafka_env.start(b, *FAST, log_name="b", env={"ANOMALY_ENGINE_STATIC_THRESHOLD": "0.3"})[0],
        kafka_env.start(c, *FAST, log_name="c", env={"ANOMALY_KAFKA_MAX_MESSAGE_BYTES": "10"})[0],
    ]
    for names in (own, shared, b, c):
        kafka_env.wait_committed(names.group, own.input, ends)
    assert terminate_all(*procs) == [0, 0, 0, 0]

    writers = {h[1].decode() for r in kafka_env.read(shared.alerts) for h in r.headers if h[0] == "group"}
    assert writers == {shared.group, b.group}  # every alert says which pipeline wrote it
    dead = kafka_env.read(shared.dead)
    assert len(dead) == sum(ends.values())  # C refused every message
    assert {h[1].decode() for r in dead for h in r.headers if h[0] == "group"} == {c.group}
    own_alerts, shared_alerts = kafka_env.read(own.alerts), kafka_env.read(shared.alerts)
    ours = [r.value for r in shared_alerts if (("group", shared.group.encode()) in r.headers)]
    assert sorted(ours) == sorted(r.value for r in own_alerts)  # A's alerts alike on both
    assert len(shared_alerts) > len(own_alerts) > 0  # B's are there too, more of them

    def retrain(names, out):
        monkeypatch.setenv("ANOMALY_KAFKA_GROUP_ID", names.group)
        return CliRunner().invoke(
            main,
            ["retrain", "-m", str(model_path), "-b", kafka_env.broker.bootstrap, "--topic", own.input]
            + ["--alerts-topic", names.alerts, "--dead-letter-topic", names.dead, "--since", "1h"]
            + ["--epochs", "1", "--min-windows", "10", "-o", str(out)],
        )

    alone = retrain(own, tmp_path / "alone.pt")
    assert alone.exit_code == 0, alone.output
    beside = retrain(shared, tmp_path / "beside.pt")
    assert beside.exit_code == 0, beside.output
    assert beside.stdout.splitlines()[0] == alone.stdout.splitlines()[0]  # the same "training set:" line
    n_dead, n_alerts = len(dead), len(shared_alerts) - len(ours)
    assert (
        f"warning: left out {n_dead:,} dead letters and {n_alerts:,} alert events of other consumer groups "
        f"({', '.join(sorted((b.group, c.group)))}); this pipeline's group is {shared.group!r}"
    ) in beside.stderr
    a, s = read_metadata(tmp_path / "alone.pt")[0], read_metadata(tmp_path / "beside.pt")[0]
    assert a["training_fingerprint"] == s["training_fingerprint"]
    assert s["lineage"]["data"]["group"] == shared.group
