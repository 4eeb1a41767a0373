"""The daemon on a shared cluster (real Tansu broker): consumer groups side by side, a changelog shared by
configuration, an incompatible model, state of other [engine] settings or in a state format this version cannot
read, a paused zombie, kill -9 during rebalances, dead letters that do not fit, topic auto-creation and
auto_offset_reset."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from conftest import (
    assert_exactly_once_for_read_committed,
    assert_matches_replay,
    cut_with_open_alerts,
    http_status,
    metric,
    replay_expected,
    same_state,
    segments,
    terminate,
    terminate_all,
    wait_for,
)

from anomaly.bundle import Bundle, load_bundle, save_bundle
from anomaly.config import DataConfig, EngineConfig, ModelConfig, TrainConfig
from anomaly.data import load_series
from anomaly.kafka.changelog import Owner, decode_record, encode_header, model_fingerprint
from anomaly.metrics import RESTORE_REFUSALS
from anomaly.synthetic import SyntheticSpec, generate_keys
from anomaly.training import train

pytestmark = pytest.mark.integration
AT_LOG = [sys.executable, str(Path(__file__).with_name("at_log.py"))]  # kills itself at a log line
PER_GROUP = "changelog__{group}--{topic}"
FAST = ("--checkpoint-interval", "0.3")
# Group timeouts a busy machine's stalls do not pass, for tests of two members that are not about fencing
# (given after FAST_GROUP's 3 s, so they win).
CALM_GROUP = ("--session-timeout-ms", "10000", "--max-poll-interval-ms", "10000")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    """Same features as tiny_model, another architecture (hidden 8): its state cannot restore tiny's."""
    frame = generate_keys(SyntheticSpec(n_sensors=3, n_points=600, seed=5), 1)
    d = tmp_path_factory.mktemp("other")
    frame.to_csv(d / "train.csv", index=False)
    series, feats = load_series([d / "train.csv"], DataConfig(key_column="sensor_id"))
    result = train(
        series, feats, ModelConfig(window=8, hidden_size=8), TrainConfig(epochs=1, device="cpu", seed=0)
    )
    path = save_bundle(result.bundle, d / "other.pt")
    return path, load_bundle(path)


def _run_to(kafka_env, names, ends, *extra: str, **kw) -> str:
    """Start a daemon, wait until it has committed ``ends``, stop it cleanly; returns its log."""
    proc, _ = kafka_env.start(names, *FAST, *extra, **kw)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    return kafka_env.logs[-1].read_text()


def _first_run(kafka_env, stream, tiny_model, **run):
    """The stream's first half produced to two partitions and consumed to its end by one daemon run (``run``:
    `_run_to`'s options): the names, the bundle, the series, both halves and the first half's end offsets."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    _run_to(kafka_env, names, ends, **run)
    return names, bundle, series, first, second, ends


def _run_counting_refusals(kafka_env, names, ends, *extra: str, **kw) -> tuple[str, dict[str, float]]:
    """:func:`_run_to`, with the daemon's anomaly_restore_refused_total by reason read before it stops."""
    proc, port = kafka_env.start(names, *FAST, *extra, **kw)
    kafka_env.wait_committed(names.group, names.input, ends)
    refused = {
        reason: metric(port, "anomaly_restore_refused_total", f'{{reason="{reason}"}}')
        for reason in RESTORE_REFUSALS
    }
    assert terminate(proc) == 0
    return kafka_env.logs[-1].read_text(), refused


def _merge(ends: dict[int, int], more: dict[int, int]) -> dict[int, int]:
    return {p: max(ends.get(p, 0), more.get(p, 0)) for p in set(ends) | set(more)}


def _second_group(kafka_env, names):
    other = kafka_env.names(partitions=1)
    other.input, other.changelog = names.input, names.changelog
    return other


def test_two_groups_side_by_side_each_keep_their_own_changelog(kafka_env, stream, tiny_model):
    _, series = stream
    _, bundle = tiny_model
    g1 = kafka_env.names(partitions=2)
    g1.changelog = PER_GROUP
    g2 = _second_group(kafka_env, g1)
    first, second = segments(series, 2)
    ends = kafka_env.produce(g1.input, first, bundle.features)
    a, _ = kafka_env.start(g1, *FAST, log_name="g1")
    b, _ = kafka_env.start(g2, *FAST, log_name="g2")
    kafka_env.wait_committed(g1.group, g1.input, ends)
    kafka_env.wait_committed(g2.group, g1.input, ends)
    assert terminate_all(a, b) == [0, 0]
    ends = _merge(ends, kafka_env.produce(g1.input, second, bundle.features))
    a, _ = kafka_env.start(g1, *FAST, log_name="g1")
    b, _ = kafka_env.start(g2, *FAST, log_name="g2")
    kafka_env.wait_committed(g1.group, g1.input, ends)
    kafka_env.wait_committed(g2.group, g1.input, ends)
    assert terminate_all(a, b) == [0, 0]

    for names in (g1, g2):
        names.changelog = f"changelog__{names.group}--{names.input}"
        assert_matches_replay(kafka_env, names, bundle, series)
    assert "restored 2 from the changelog" in kafka_env.logs[-1].read_text()


def test_a_changelog_shared_with_another_group_and_model_is_not_restored(
    kafka_env, stream, tiny_model, other_model
):
    """The issue's scenario: group g2 with another model writes checkpoints into g1's changelog topic; g1
    restarts and must neither take them nor lose its input position."""
    _, series = stream
    _, bundle = tiny_model
    g1 = kafka_env.names(partitions=2)
    g2 = _second_group(kafka_env, g1)
    first, second = segments(series, 2)
    ends = kafka_env.produce(g1.input, first, bundle.features)
    _run_to(kafka_env, g1, ends)
    ends = _merge(ends, kafka_env.produce(g1.input, second, bundle.features))
    _run_to(kafka_env, g2, ends, model=other_model[0])  # writes newer records for the same partitions
    log, refused = _run_counting_refusals(kafka_env, g1, ends)

    assert f"written by group {g2.group} ignored" in log
    assert refused == {"other_group": 2, "incompatible_model": 0, "bad_state": 0}  # one per partition
    assert "restored 2 from the changelog" in log
    g1_state = kafka_env.changelog_state(g1.changelog, bundle, g1.group)
    expected = replay_expected(bundle, series)
    same_state(g1_state, expected.engine)
    assert kafka_env.windows(g1.scores) == expected.windows
    assert kafka_env.alert_ids(g1.alerts) == expected.alert_ids


def test_state_of_an_incompatible_model_is_refused_and_the_input_position_kept(
    kafka_env, stream, tiny_model, other_model
):
    _, series = stream
    _, bundle = tiny_model
    other_path, other = other_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    _run_to(kafka_env, names, ends)
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features))
    log, refused = _run_counting_refusals(kafka_env, names, ends, model=other_path)

    assert log.count("not restored: written by an incompatible model") == 2
    assert refused == {"other_group": 0, "incompatible_model": 2, "bad_state": 0}
    assert f"stopped: {sum(len(s) for s in second):,} messages" in log  # every new message, none skipped
    expected = replay_expected(other, second)  # fresh keys from the committed offset on
    got = {k: w for k, w in kafka_env.windows(names.scores).items() if w["model_version"] == other.version}
    assert got == expected.windows and len(got) > 0


DYNAMIC = {
    "ANOMALY_ENGINE_THRESHOLD": "dynamic"
}  # keeps per-key state that `static` (the tests' default) lacks


def _records(kafka_env, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    return [(r.partition, r.offset, r.key, r.value) for r in kafka_env.read(topic)]


def _refusal(partitions: str) -> str:
    return (
        f"error: cannot restore the state of {partitions}: field hist is not kept here; field pushed is not "
        "kept here; field dyn_doubt is not kept here (the [engine] settings that shape per-key state differ from "
        "the ones it was written with: threshold kind, dynamic_history, spot_init, spot_peaks, spot_depth, or a "
        "level-shift or stuck-sensor policy). Nothing was restored or written: roll those settings back (or run "
        "the anomaly version that wrote it) to continue with that state, or start once with --reset-state to "
        "discard it (those keys start fresh from the committed offsets, their open alerts closed with reason "
        "evicted)"
    )


def test_a_restart_with_other_state_shaping_settings_stops_and_the_rollback_restores_the_state(
    kafka_env, stream, tiny_model
):
    """`dynamic` turned back to `static` by mistake: the restart started every key fresh (bad_state), and its
    claims and checkpoints replaced the old ones, so rolling the setting back lost every key's state for good.
    Now it stops with one line (status 2) before it writes anything; the restart with `dynamic` again
    continues as if the refused start had never happened."""
    names, bundle, series, first, second, ends = _first_run(kafka_env, stream, tiny_model, env=DYNAMIC)
    changelog, committed = _records(kafka_env, names.changelog), kafka_env.committed(names.group, names.input)
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features))

    refused, _ = kafka_env.start(names, *FAST)  # threshold static
    assert refused.wait(60) == 2
    errors = [line for line in kafka_env.logs[-1].read_text().splitlines() if line.startswith("error:")]
    assert errors == [_refusal(f"2 partition(s) ({names.input}:0, {names.input}:1)")]
    assert _records(kafka_env, names.changelog) == changelog
    assert kafka_env.committed(names.group, names.input) == committed

    log = _run_to(kafka_env, names, ends, env=DYNAMIC)
    assert "restored 2 from the changelog" in log
    dynamic = EngineConfig(threshold="dynamic")
    expected = replay_expected(bundle, series, config=dynamic)
    same_state(kafka_env.changelog_state(names.changelog, bundle, config=dynamic), expected.engine)
    assert kafka_env.windows(names.scores) == expected.windows
    assert kafka_env.alert_ids(names.alerts) == expected.alert_ids


def test_reset_state_starts_the_keys_of_other_settings_fresh_from_the_committed_offset(
    kafka_env, stream, tiny_model
):
    """--reset-state: what a restart with other state-shaping settings did before, asked for."""
    names, bundle, series, first, second, ends = _first_run(kafka_env, stream, tiny_model, env=DYNAMIC)
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features))
    log, refused = _run_counting_refusals(kafka_env, names, ends, "--reset-state")

    assert log.count("WARNING anomaly.kafka.daemon: --reset-state: discarded the state of ") == 2
    assert log.count("(snapshot state does not fit this engine: field hist is not kept here") == 2
    assert refused == {"other_group": 0, "incompatible_model": 0, "bad_state": 2}
    assert f"stopped: {sum(len(s) for s in second):,} messages" in log  # every new message, none skipped
    before = replay_expected(bundle, first, config=EngineConfig(threshold="dynamic"))
    after = replay_expected(bundle, second)  # fresh keys from the committed offset on
    assert kafka_env.windows(names.scores) == {**before.windows, **after.windows}
    assert len(after.windows) > 0
    same_state(kafka_env.changelog_state(names.changelog, bundle), after.engine)


def test_reset_state_closes_the_open_alerts_of_the_state_it_discards(kafka_env, stream, tiny_model):
    """The discarded state's open alerts are closed at the restore (reason evicted, the version that opened
    them), as another model's are: before, a refused state's alerts stayed open for ever on the alerts topic."""
    _, series = stream
    _, bundle = tiny_model
    first, open_ids = cut_with_open_alerts(bundle, series)
    names = kafka_env.names(partitions=2)
    ends = kafka_env.produce(names.input, first, bundle.features)
    _run_to(kafka_env, names, ends)
    assert {(i, s) for i, s in kafka_env.alert_ids(names.alerts) if i in open_ids} == {
        (i, "open") for i in open_ids
    }

    # no limit on an alert's readings: each key no longer counts them (one per-key field less)
    no_limit = {"ANOMALY_ENGINE_PARTIAL_SHIFT_READINGS": "0"}
    proc, port = kafka_env.start(names, *FAST, "--reset-state", env=no_limit)
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "the daemon ready")
    closed = {
        a["id"]: a
        for a in map(json.loads, (r.value for r in kafka_env.read(names.alerts)))
        if a["status"] == "closed" and a["id"] in open_ids
    }
    assert set(closed) == open_ids and len(open_ids) > 0
    assert {(a["reason"], a["model_version"]) for a in closed.values()} == {("evicted", bundle.version)}
    assert metric(port, "anomaly_alerts_closed_total") == len(open_ids)
    assert metric(port, "anomaly_restore_refused_total", '{reason="bad_state"}') == 2
    assert terminate(proc) == 0


def test_a_checkpoint_in_a_state_format_this_version_cannot_read_stops_the_start_until_reset_state(
    kafka_env, stream, tiny_model
):
    """A downgrade meets a checkpoint in a newer state format (or corrupted bytes): the start discarded it
    silently (bad_state) and its claims replaced it for good. Now it stops with one line naming the partition and
    what is wrong, writing nothing; --reset-state discards it and restores the other partitions."""
    import struct

    from anomaly.kafka.changelog import WRITE_CODEC, compress_state, decompress_state

    names, bundle, series, first, second, ends = _first_run(kafka_env, stream, tiny_model)
    pid = f"{names.input}:0"
    head, payload = next(
        decode_record(v) for _, _, k, v in reversed(_records(kafka_env, names.changelog)) if k == pid.encode()
    )
    snapshot = decompress_state(head, payload)
    (n,) = struct.unpack("<I", snapshot[4:8])
    header = json.dumps({**json.loads(snapshot[8 : 8 + n]), "format": "anomaly-state/3"}).encode()
    newer = snapshot[:4] + struct.pack("<I", len(header)) + header + snapshot[8 + n :]
    stored = compress_state(newer)
    owner = Owner(head["group"], head["model"], head["txn"])
    value = encode_header(
        pid, head["offset"], stored, head["keys"], owner=owner, epoch=head["epoch"] + 1, raw=len(newer)
    )
    assert head["codec"] == WRITE_CODEC
    # records of another tool, read past (before, their header ended the start with a JSONDecodeError traceback):
    # one under the partition's key, replaced by the record after it (a higher epoch), one under a key not UTF-8
    kafka_env.producer.send(names.changelog, key=pid.encode(), value=b"not a checkpoint").get()
    kafka_env.producer.send(names.changelog, key=b"\xff", value=b"\xff").get()
    kafka_env.producer.send(names.changelog, key=pid.encode(), value=value + b"\n" + stored).get()
    changelog, committed = _records(kafka_env, names.changelog), kafka_env.committed(names.group, names.input)
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features))

    refused, _ = kafka_env.start(names, *FAST)
    assert refused.wait(60) == 2
    errors = [line for line in kafka_env.logs[-1].read_text().splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot restore the state of 1 partition(s) ({pid}): the checkpoint of {pid} was written in state "
        "format 'anomaly-state/3'; this version reads 'anomaly-state/2'. Nothing was restored or written: run the "
        "anomaly version that wrote it to continue with that state, or start once with --reset-state to discard "
        "it (those keys start fresh from the committed offsets); until then every start stops here"
    ]
    assert _records(kafka_env, names.changelog) == changelog
    assert kafka_env.committed(names.group, names.input) == committed

    log, counted = _run_counting_refusals(kafka_env, names, ends, "--reset-state")
    assert "restored 1 from the changelog" in log
    assert counted == {"other_group": 0, "incompatible_model": 0, "bad_state": 1}


def test_a_member_assigned_state_of_other_settings_mid_run_stops_without_writing(
    kafka_env, stream, tiny_model
):
    """A rolling deploy of a state-shaping setting: member B (`dynamic`) checkpoints a partition that member A
    (`static`) is assigned back when B leaves. A cannot continue that state, so it stops with the start-up's
    error line (status 2), writing nothing for it; its own partition was checkpointed at the revocation. The
    group timeouts are longer than the suite's 3 s (as in test_kafka_recovery's hand-over): a stall past them
    on a busy machine fences a member as a zombie, which is not what this tests and breaks what it asserts
    (A refusing both partitions, or a third transactional id in the changelog)."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    parts = segments(series, 3)
    ends = kafka_env.produce(names.input, parts[0], bundle.features)
    a, port_a = kafka_env.start(names, *FAST, *CALM_GROUP, log_name="a")
    kafka_env.wait_committed(names.group, names.input, ends)
    b, port_b = kafka_env.start(names, *FAST, *CALM_GROUP, log_name="b", env=DYNAMIC)
    wait_for(
        lambda: http_status(port_a, "/readyz") == 200 and http_status(port_b, "/readyz") == 200,
        60,
        "A and B with a partition each",
    )
    ends = _merge(ends, kafka_env.produce(names.input, parts[1], bundle.features))
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(b) == 0  # its final checkpoint has the dynamic threshold's fields
    assert a.wait(60) == 2
    errors = [line for line in kafka_env.logs[0].read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    b_pid = next(
        f"{names.input}:{p}" for p in (0, 1) if errors[0] == _refusal(f"1 partition(s) ({names.input}:{p})")
    )
    heads = _changelog_heads(kafka_env, names.changelog)
    txn_base = {h["txn"].rsplit("-", 1)[0] for h in heads}
    assert len(txn_base) == 2  # A's and B's
    a_base = next(h["txn"].rsplit("-", 1)[0] for h in heads if h["epoch"] == 1)
    last = [h for h in heads if h["source"] == b_pid][-1]
    assert (
        last["txn"].rsplit("-", 1)[0] != a_base and last["offset"] is not None
    )  # B's final checkpoint, last
    assert kafka_env.committed(names.group, names.input) == ends


def _changelog_heads(kafka_env, topic: str) -> list[dict]:
    return [
        decode_record(r.value)[0] for r in kafka_env.read(topic) if r.value is not None and b"/" not in r.key
    ]


def test_a_paused_zombie_cannot_corrupt_the_new_owners_state_or_output_and_rejoins(
    kafka_env, stream, tiny_model
):
    """A is paused (SIGSTOP) with processed but uncheckpointed messages, past its session timeout; B takes its
    partitions; A resumes. A's late writes are refused by the broker (its transactional id was fenced by B); A
    drops its state, rejoins the group, takes a partition back (restored from the changelog) and carries on:
    both daemons together continue exactly as a replay."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    parts = segments(series, 3)
    ends = kafka_env.produce(names.input, parts[0], bundle.features)
    a, port_a = kafka_env.start(names, "--checkpoint-interval", "4", log_name="a")
    kafka_env.wait_committed(names.group, names.input, ends)
    seen = metric(port_a, "anomaly_messages_consumed_total")
    ends = _merge(ends, kafka_env.produce(names.input, parts[1], bundle.features))
    n1 = sum(len(s) for s in parts[1])
    wait_for(lambda: metric(port_a, "anomaly_messages_consumed_total") >= seen + n1, 20, "A consumed part 2")
    a.send_signal(signal.SIGSTOP)  # processed, not yet checkpointed (interval 4 s)
    try:
        b, port_b = kafka_env.start(names, *FAST, log_name="b")
        wait_for(lambda: http_status(port_b, "/readyz") == 200, 60, "B owns the partitions")
        kafka_env.wait_committed(names.group, names.input, ends, timeout_s=60)
        a_txn = {h["txn"] for h in _changelog_heads(kafka_env, names.changelog) if h["epoch"] == 1}
        assert len(a_txn) == 1
    finally:
        a.send_signal(signal.SIGCONT)
    wait_for(lambda: metric(port_a, "anomaly_fenced_total") == 1.0, 30, "the zombie to notice")
    wait_for(
        lambda: http_status(port_a, "/readyz") == 200 and http_status(port_b, "/readyz") == 200,
        60,
        "A rejoined with a partition of its own",
    )
    before = metric(port_a, "anomaly_messages_consumed_total")
    ends = _merge(ends, kafka_env.produce(names.input, parts[2], bundle.features))
    kafka_env.wait_committed(names.group, names.input, ends)
    assert a.poll() is None  # still running
    assert metric(port_a, "anomaly_messages_consumed_total") > before  # and consuming after the rejoin
    assert metric(port_b, "anomaly_messages_consumed_total") > 0
    assert terminate_all(a, b) == [0, 0]

    log_a = kafka_env.logs[0].read_text()
    assert (
        "rejoining the group" in log_a and "assigned 1 partition(s); restored 1 from the changelog" in log_a
    )
    heads = _changelog_heads(kafka_env, names.changelog)
    b_claim = next(i for i, h in enumerate(heads) if h["epoch"] == 2)
    late = [h for h in heads[b_claim:] if h["txn"] in a_txn]
    assert late == []  # nothing of the zombie's fenced producer landed after the new owner's claim
    assert_matches_replay(kafka_env, names, bundle, series)  # every window once (a re-sent one identical)


def test_a_restored_checkpoint_whose_offset_commit_was_lost_gets_committed(kafka_env, stream, tiny_model):
    """The previous owner checkpointed the whole stream and died before its offset commit (or, on Tansu, its
    transaction was aborted but its records stay visible). The next owner restores that state, has nothing left
    to consume, and must still commit the restored position: the committed offset follows the state."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    first, second = segments(series, 2)
    done = kafka_env.produce(names.input, first, bundle.features)
    _run_to(kafka_env, names, done)
    ends = kafka_env.produce(names.input, second, bundle.features)
    expected = replay_expected(bundle, series)  # the dead owner's state: every message processed
    pid = f"{names.input}:0"
    owner = Owner(names.group, model_fingerprint(bundle.features, bundle.arch.to_json()), "dead-owner")
    # written the way daemons before the zstd codec wrote it (zlib, no "raw"): still restored
    payload = zlib.compress(expected.engine.snapshot(), 1)
    head = encode_header(
        pid, ends[0] - 1, payload, len(expected.engine.keys()), owner=owner, epoch=2, codec="zlib"
    )
    kafka_env.producer.send(names.changelog, key=pid.encode(), value=head + b"\n" + payload).get()
    assert kafka_env.committed(names.group, names.input) == done

    log = _run_to(kafka_env, names, ends)

    assert "restored 1 from the changelog" in log
    assert "stopped: 0 messages" in log
    assert kafka_env.committed(names.group, names.input) == ends
    same_state(kafka_env.changelog_state(names.changelog, bundle), expected.engine)


def test_a_restore_reads_past_another_writers_open_transaction_on_the_changelog(
    kafka_env, stream, tiny_model
):
    """Another member's transaction is open on the changelog partition while this daemon restores (e.g. its
    claims, not yet committed). Tansu 0.6 then reports the partition's end as 0 to read_committed readers and
    a restore that trusted it read nothing: state lost, keys fresh. The restore must still take its own
    checkpoints, written before the open transaction."""
    from kafka import KafkaProducer

    names, bundle, series, first, second, ends = _first_run(kafka_env, stream, tiny_model)
    other = KafkaProducer(
        bootstrap_servers=kafka_env.broker.bootstrap, transactional_id=f"other-{names.group}"
    )
    other.init_transactions()
    other.begin_transaction()
    claim = encode_header("elsewhere:0", None, b"", 0, owner=Owner("other", "m", "other"), epoch=1)
    other.send(names.changelog, key=b"elsewhere:0", value=claim + b"\n").get()  # open during the restore
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features))
    proc, _ = kafka_env.start(names, *FAST)
    try:
        wait_for(lambda: "assigned" in kafka_env.logs[-1].read_text(), 60, "the restore")
    finally:  # Tansu hides transactional offset commits behind an open transaction on the same partition
        other.abort_transaction()
        other.close(timeout=1)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert terminate(proc) == 0
    log = kafka_env.logs[-1].read_text()

    assert "restored 2 from the changelog" in log
    assert f"stopped: {sum(len(s) for s in second):,} messages" in log
    assert_matches_replay(kafka_env, names, bundle, series)


def _send_in_background(kafka_env, topic, part, features, rate=800):
    """Produce ``part`` at ``rate`` messages/s on a started thread; ``got`` holds its end offsets once joined."""
    got: dict[int, int] = {}
    sender = threading.Thread(target=lambda: got.update(kafka_env.produce(topic, part, features, rate=rate)))
    sender.start()
    return sender, got


def test_kill_9_during_restores_and_rebalances_changes_nothing(kafka_env, stream, tiny_model):
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=4)
    parts = segments(series, 4)
    a, _ = kafka_env.start(names, *FAST, log_name="a")
    ends = kafka_env.produce(names.input, parts[0], bundle.features)
    kafka_env.wait_committed(names.group, names.input, ends)
    phases = []

    def log_has(text: str) -> bool:
        return text in kafka_env.logs[-1].read_text()

    for part, phase in zip(parts[1:], ("joining", "restoring", "owning"), strict=True):
        sender, got = _send_in_background(kafka_env, names.input, part, bundle.features)
        # restoring: B has fenced the previous owner and is reading/claiming its state. It kills itself at that
        # log line (tests/integration/at_log.py): a kill sent after polling its log can land once B is assigned.
        at = {"KILL_AT_LOG": "fenced transactional id" if phase == "restoring" else ""}
        b, port_b = kafka_env.start(
            names, *FAST, log_name="b", command=AT_LOG, env=at
        )  # joining: a rebalance
        wait_for(lambda: http_status(port_b, "/readyz") == 503, 60, "B serving and joining")  # noqa: B023
        if phase == "joining":  # A has revoked and checkpointed; the group has not settled
            time.sleep(0.5)
        elif phase == "owning":
            wait_for(lambda: log_has("assigned"), 30, "B owning partitions")
            time.sleep(0.3)
        if phase != "restoring":
            b.send_signal(signal.SIGKILL)
        assert b.wait(60) == -signal.SIGKILL
        log = kafka_env.logs[-1].read_text()
        phases.append("owning" if "assigned" in log else "restoring" if "fenced" in log else "joining")
        sender.join()
        ends = _merge(ends, got)
    assert phases == ["joining", "restoring", "owning"]
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(a) == 0
    expected = assert_matches_replay(kafka_env, names, bundle, series)
    assert_exactly_once_for_read_committed(kafka_env, names, expected)


def test_kill_9_of_the_old_owner_during_rebalances_changes_nothing(kafka_env, stream, tiny_model):
    """The other side of a rebalance: the member giving its partitions up is killed before the group settles,
    once as it logs that it starts checkpointing its revoked partitions (before that checkpoint) and once as it
    logs them revoked (checkpointed, not yet rejoined). The next owner restores what it left (fencing its
    writer) and the result equals a replay. The owner kills itself at the log line (tests/integration/at_log.py):
    a kill sent after polling its log came late on a busy machine, once the owner had rejoined."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=4)
    parts = segments(series, 3)
    kill_ats = ("revoking", "revoked")

    def member(log_name: str, kill_at: str = ""):
        return kafka_env.start(names, *FAST, log_name=log_name, command=AT_LOG, env={"KILL_AT_LOG": kill_at})

    owner, _ = member("owner", kill_ats[0])
    ends = kafka_env.produce(names.input, parts[0], bundle.features)
    kafka_env.wait_committed(names.group, names.input, ends)
    phases = []
    for i, part in enumerate(parts[1:]):
        owner_log = kafka_env.logs[kafka_env.procs.index(owner)]
        sender, got = _send_in_background(kafka_env, names.input, part, bundle.features)
        time.sleep(0.5)  # the owner is busy with the new messages (either way, it is killed at its log line)
        newcomer, port = member("newcomer", kill_ats[i + 1] if i + 1 < len(kill_ats) else "")
        assert owner.wait(60) == -signal.SIGKILL
        text = owner_log.read_text()
        phases.append("revoked" if "revoked" in text else "revoking")
        assert "assigned" not in text.split("revoking", 1)[1]  # killed before the group settled
        sender.join()
        ends = _merge(ends, got)
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, "the newcomer owns the partitions")  # noqa: B023
        owner = newcomer
    kafka_env.wait_committed(names.group, names.input, ends, timeout_s=90)
    assert terminate(owner) == 0
    assert phases == ["revoking", "revoked"]
    with_data = sum(1 for end in ends.values() if end > 0)
    assert (
        f"assigned 4 partition(s); restored {with_data} from the changelog" in kafka_env.logs[-1].read_text()
    )
    expected = assert_matches_replay(kafka_env, names, bundle, series)
    assert_exactly_once_for_read_committed(kafka_env, names, expected)


def test_dead_letters_always_fit_and_a_refused_one_never_stops_the_stream(
    kafka_env, stream, tiny_model, monkeypatch
):
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first, second = segments(series, 2)
    big1 = json.dumps({"key": "big", "ts": 1, "values": [1.5] * 9000}).encode()  # ~36 KB
    big2 = big1.replace(b'"big"', b'"big2"')
    monkeypatch.setenv("ANOMALY_KAFKA_MAX_MESSAGE_BYTES", "10000")  # both are refused as oversized
    monkeypatch.setenv("ANOMALY_KAFKA_MAX_REQUEST_BYTES", "20000")  # emulates a broker's message.max.bytes
    monkeypatch.setenv("ANOMALY_KAFKA_DEAD_LETTER_MAX_BYTES", "30000")  # misconfigured: the letter cannot fit
    ends = kafka_env.produce(names.input, first, bundle.features, raw=[(b"big", big1)])
    proc, port = kafka_env.start(names, *FAST)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert metric(port, "anomaly_dead_letters_refused_total") == 1.0
    assert terminate(proc) == 0
    warned = "warning: kafka.dead_letter_max_bytes 30000 leaves no room under kafka.max_request_bytes 20000"
    assert kafka_env.logs[-1].read_text().splitlines()[0].startswith(warned)  # said at start

    monkeypatch.setenv("ANOMALY_KAFKA_DEAD_LETTER_MAX_BYTES", "8000")
    ends = _merge(ends, kafka_env.produce(names.input, second, bundle.features, raw=[(b"big2", big2)]))
    _run_to(kafka_env, names, ends)

    assert_matches_replay(kafka_env, names, bundle, series)
    (dead,) = kafka_env.read(names.dead)
    h = {k: v.decode() for k, v in dead.headers}
    assert (dead.key, dead.value) == (b"big2", big2[: 8000 - len(b"big2")])
    assert "warning: kafka.dead_letter_max_bytes" not in kafka_env.logs[-1].read_text()  # 8000 fits
    assert (h["reason"], h["truncated"], h["original_bytes"]) == ("oversized", "1", str(len(big2)))
    assert h["original_sha256"] == hashlib.sha256(big2).hexdigest()


def test_a_dead_letter_of_a_huge_key_fits_with_the_default_limits(kafka_env, stream, tiny_model):
    """A 250 KB body key in an 850 KB message, or a 700 KB message key: the dead letter's entity_key header
    repeated the key uncut, so the letter (1.1 and 1.4 MB) was refused by the producer's 1 MiB max_request_bytes
    and lost. Both now reach the topic."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    body = json.dumps({"key": "K" * 250_000, "ts": "yesterday", "values": [1, 2, 3], "note": "x" * 600_000})
    body = body.encode()  # 850 KB; the key under the key limit (256 KiB)
    raw = [(b"k", body), (b"M" * 700_000, b"{not json")]
    ends = kafka_env.produce(names.input, segments(series, 4)[0], bundle.features, raw=raw)
    proc, port = kafka_env.start(names, *FAST)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert metric(port, "anomaly_dead_letters_refused_total") == 0.0
    assert terminate(proc) == 0
    dead = sorted(kafka_env.read(names.dead), key=lambda r: int(dict(r.headers)["source_offset"]))
    got = [
        (r.key, r.value, {k: v for k, v in r.headers if k in ("reason", "entity_key", "truncated")})
        for r in dead
    ]
    assert got == [
        (b"k", body, {"reason": b"bad_timestamp", "entity_key": b"K" * 1024, "truncated": b"1"}),
        (
            b"M" * 1024,
            b"{not json",
            {"reason": b"invalid_json", "entity_key": b"M" * 1024, "truncated": b"1"},
        ),
    ]


def test_a_key_too_long_for_the_outputs_is_a_dead_letter_not_a_crash_loop(
    kafka_env, stream, tiny_model, monkeypatch
):
    """Readings of a 70 KB key, far from normal: its alert (the key three times, 210 KB) was refused by the
    producer (max_request_bytes 200 KB here, 1 MiB by default against 350 KB keys) and the daemon exited with
    `error: Kafka client error: ... MessageSizeTooLargeError`, at every restart. Keys above max_request_bytes / 4
    are now dead letters (`oversized`) and the stream equals the replay of the rest."""
    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=2)
    first = segments(series, 4)[0]
    monkeypatch.setenv("ANOMALY_KAFKA_MAX_REQUEST_BYTES", "200000")
    long_key = "K" * 70_000
    raw = [
        (b"k", json.dumps({"key": long_key, "ts": 1.7e9 + 60 * i, "values": [50.0, -50.0, 50.0]}).encode())
        for i in range(12)
    ]
    ends = kafka_env.produce(names.input, first, bundle.features, raw=raw)
    proc, port = kafka_env.start(names, *FAST)
    kafka_env.wait_committed(names.group, names.input, ends)
    assert metric(port, "anomaly_messages_invalid_total", '{reason="oversized"}') == 12.0
    assert terminate(proc) == 0
    dead = kafka_env.read(names.dead)
    assert sorted((r.value, dict(r.headers)["reason"]) for r in dead) == sorted(
        (v, b"oversized") for _, v in raw
    )
    assert_matches_replay(kafka_env, names, bundle, first)


def _lags(port: int) -> dict[str, float]:
    """The daemon's anomaly_consumer_lag_messages by partition (a series per assigned partition whose position
    and end are known)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    found = re.findall(
        r'^anomaly_consumer_lag_messages\{partition="(\d+)",topic="[^"]+"\} (\S+)$', text, re.M
    )
    return {p: float(v) for p, v in found}


def test_auto_created_topics_and_auto_offset_reset_latest(kafka_env, stream, tiny_model, monkeypatch):
    from kafka import KafkaConsumer

    _, series = stream
    _, bundle = tiny_model
    names = kafka_env.names(partitions=1)
    tag = names.group
    names.input, names.alerts, names.scores, names.dead = (f"{t}-{tag}" for t in ("in", "al", "sc", "dl"))
    monkeypatch.setenv("ANOMALY_KAFKA_TOPIC_PARTITIONS", "3")
    proc, port = kafka_env.start(names, *FAST, "--auto-create-topics")
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    assert terminate(proc) == 0
    consumer = KafkaConsumer(bootstrap_servers=kafka_env.broker.bootstrap)
    created = {t: len(consumer.partitions_for_topic(t) or ()) for t in names.args()[1::2][:4]}
    consumer.close()
    assert created == {names.input: 3, names.alerts: 3, names.scores: 3, names.dead: 3}

    first, second = segments(series, 2)
    kafka_env.produce(names.input, first, bundle.features)  # before the group exists: skipped with latest
    for p in range(
        3
    ):  # Tansu answers "latest" with the last batch's base offset + 1: end on 1-record batches
        kafka_env.producer.send(names.input, key=b"end", value=b"{}", partition=p)
        kafka_env.producer.flush()
    names.group += "-latest"
    proc, port = kafka_env.start(names, *FAST, "--auto-offset-reset", "latest")
    wait_for(lambda: http_status(port, "/readyz") == 200, 60, "daemon ready")
    # The starting offsets are resolved (to the end) on the first polls: a partition has a lag series once its
    # position is known and a fetch gave its end (a fixed 1.5 s sleep here, which a loaded machine can outlast).
    wait_for(lambda: _lags(port) == {"0": 0.0, "1": 0.0, "2": 0.0}, 60, "the starting offsets at the ends")
    ends = kafka_env.produce(names.input, second, bundle.features)
    wait_for(
        lambda: metric(port, "anomaly_messages_consumed_total") >= sum(len(s) for s in second),
        30,
        "the second half consumed",
    )
    time.sleep(1.0)
    assert metric(port, "anomaly_messages_consumed_total") == sum(len(s) for s in second)
    assert terminate(proc) == 0
    del ends
