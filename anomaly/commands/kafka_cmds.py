"""consume and produce: the Kafka daemon and a CSV-to-Kafka replayer."""

from __future__ import annotations

import logging
from typing import Any

import click

from anomaly.commands.common import (
    config_from,
    data_options,
    empty_refused,
    exit_now,
    one_line_errors,
    pipeline_option,
    quiet_kafka,
    refuse_replacing_inputs,
    setup_logging,
    time_column_option,
    warn_line,
)
from anomaly.config import changelog_shared, dead_letters_lost

log = logging.getLogger(__name__)


def _kafka_options(fn):  # type: ignore[no-untyped-def]
    for opt in reversed(
        [
            click.option(
                "--bootstrap-servers",
                "-b",
                default=None,
                help="Comma-separated host:port list.  [default: 127.0.0.1:9092]",
            ),
            click.option(
                "--security-protocol",
                type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
                default=None,
                help="Security protocol; SASL/SSL details come from the pipeline or "
                "ANOMALY_KAFKA_* variables (never pass a password as an option).  [default: PLAINTEXT]",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@click.command("consume")
@click.option(
    "--model",
    "-m",
    type=click.Path(dir_okay=False),
    required=True,
    help="Model bundle; reloaded on SIGHUP or when the file changes.",
)
@pipeline_option
@_kafka_options
@click.option("--topics", default=None, help="Comma-separated input topics.  [default: sensors]")
@click.option("--group-id", default=None, help="Consumer group.  [default: anomaly]")
@click.option("--alerts-topic", default=None, help="Topic for alert JSON.  [default: anomaly-alerts]")
@click.option("--scores-topic", default=None, help="Topic for per-window scores.  [default: none (off)]")
@click.option(
    "--dead-letter-topic", default=None, help="Topic for refused messages.  [default: anomaly-dead-letters]"
)
@click.option(
    "--changelog-topic",
    default=None,
    help="Compacted state topic; {group} and {topic} are filled in per consumer group and input topic.  "
    "[default: changelog__{group}--{topic}]",
)
@click.option(
    "--auto-offset-reset",
    type=click.Choice(["earliest", "latest"]),
    default=None,
    help="Where a group without committed offsets starts.  [default: earliest]",
)
@click.option(
    "--auto-create-topics/--no-auto-create-topics",
    default=None,
    help="Create missing input and output topics (kafka.topic_partitions, kafka.replication_factor).  "
    "[default: no]",
)
@click.option(
    "--checkpoint-interval",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Seconds between checkpoints (state + commit).  [default: 5.0]",
)
@click.option(
    "--max-poll-records",
    type=click.IntRange(min=1),
    default=None,
    help="Messages per poll; one engine batch may take several polls of records already fetched (up to "
    "kafka.max_batch_bytes and kafka.max_batch_ms).  [default: 2000]",
)
@click.option(
    "--max-poll-interval-ms",
    type=click.IntRange(min=1000),
    default=None,
    help="Consumer max.poll.interval.ms (also the rebalance timeout).  [default: 300000]",
)
@click.option(
    "--session-timeout-ms",
    type=click.IntRange(min=1000),
    default=None,
    help="Consumer session.timeout.ms.  [default: 10000]",
)
@click.option(
    "--metrics-host", default=None, help="Host of /metrics, /healthz, /readyz.  [default: 127.0.0.1]"
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Port of /metrics, /healthz, /readyz (0: pick a free one).  [default: 9108]",
)
@click.option(
    "--bootstrap-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker at start-up before failing.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Seconds allowed for the final checkpoint after SIGTERM/SIGINT before exiting anyway.",
)
@click.option(
    "--state-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="On clean shutdown, write the engine state snapshot here.  [default: none]",
)
@click.option(
    "--reset-state",
    is_flag=True,
    help="Discard checkpointed state written with other [engine] settings that shape per-key state (threshold "
    "kind, dynamic_history, spot_*, policies), or that cannot be read (corrupted, a newer version's state "
    "format): those keys start fresh, open alerts closed (reason evicted). "
    "Without it the daemon refuses to start on such state, writing nothing, so rolling the settings back "
    "restores it. It holds for every restore of this run (the partitions it is assigned later too): drop it "
    "once the state is reset.",
)
@click.option("--verbose", "-v", is_flag=True, help="Log rebalances, checkpoints and reloads.")
@one_line_errors
def consume_cmd(
    model,
    pipeline,
    bootstrap_servers,
    security_protocol,
    topics,
    group_id,
    alerts_topic,
    scores_topic,
    dead_letter_topic,
    changelog_topic,
    auto_offset_reset,
    auto_create_topics,
    checkpoint_interval,
    max_poll_records,
    max_poll_interval_ms,
    session_timeout_ms,
    metrics_host,
    metrics_port,
    bootstrap_timeout,
    shutdown_timeout,
    state_out,
    reset_state,
    verbose,
) -> None:
    """Run the scoring daemon: consume sensor messages from Kafka, score them, produce alerts.

    State is checkpointed per partition to the changelog topic before offsets are committed, so a restart or
    rebalance resumes exactly where the state left off. SIGTERM/SIGINT stop cleanly; SIGHUP reloads the model.
    """
    setup_logging(verbose)
    quiet_kafka(verbose)
    if state_out:  # the model (then refused at the next start) or the pipeline file was replaced at shutdown
        refuse_replacing_inputs(
            state_out,
            "state snapshot",
            "--state-out",
            [(model, "model bundle"), (pipeline, "pipeline file")],
            "the daemon would replace it with the state snapshot when it stops",
        )
    cfg = config_from(
        pipeline,
        {
            "kafka.bootstrap_servers": bootstrap_servers,
            "kafka.security_protocol": security_protocol,
            "kafka.topics": topics,
            "kafka.group_id": group_id,
            "kafka.alerts_topic": alerts_topic,
            "kafka.scores_topic": scores_topic,
            "kafka.dead_letter_topic": dead_letter_topic,
            "kafka.changelog_topic": changelog_topic,
            "kafka.auto_offset_reset": auto_offset_reset,
            "kafka.auto_create_topics": auto_create_topics,
            "kafka.checkpoint_interval_s": checkpoint_interval,
            "kafka.max_poll_records": max_poll_records,
            "kafka.max_poll_interval_ms": max_poll_interval_ms,
            "kafka.session_timeout_ms": session_timeout_ms,
            "metrics.host": metrics_host,
            "metrics.port": metrics_port,
        },
    )
    lost = dead_letters_lost(cfg.kafka)
    if lost:  # a warning, not a refusal: the integration tests emulate a broker's message.max.bytes with it
        warn_line(lost)
    shared = changelog_shared(cfg.kafka)
    if shared:  # a warning, not a refusal: a group alone on a topic of its own name loses nothing
        warn_line(shared)
    import kafka.errors

    from anomaly.errors import ConfigError
    from anomaly.kafka import KafkaError
    from anomaly.kafka.checkpoint import FinalCheckpointError
    from anomaly.kafka.daemon import Daemon, DaemonOptions
    from anomaly.kafka.sinks import TransactionTimeoutError
    from anomaly.metrics import MetricsServer, PipelineMetrics

    metrics = PipelineMetrics()
    server = MetricsServer(metrics, cfg.metrics.host, cfg.metrics.port)
    early = _EarlySignals()  # before the endpoint answers: from then on the daemon is started to its operator
    try:
        server.start()  # bound first: a taken port fails before anything connects
    except OSError as exc:
        early.restore()
        raise ConfigError(
            f"cannot serve metrics on {cfg.metrics.host}:{cfg.metrics.port}: {exc.strerror or exc} "
            "(another daemon on this host? set --metrics-port or metrics.port)",
            key="metrics.port",
        ) from None
    try:
        daemon = Daemon(
            cfg,
            model,
            metrics=metrics,
            server=server,
            options=DaemonOptions(
                bootstrap_timeout_s=bootstrap_timeout,
                shutdown_timeout_s=shutdown_timeout,
                state_out=state_out,
                reset_state=reset_state,
            ),
        )
        daemon.connect()  # fails fast, with one line, before anything is printed
    except BaseException:
        server.stop()
        early.restore()
        raise
    early.stop_waking()
    daemon.install_signal_handlers()
    if early.reload_requested:  # a SIGHUP while starting: the file may have changed since it was loaded
        daemon.request_reload()
    click.echo(
        f"anomaly consume: {', '.join(cfg.kafka.topics)} on {cfg.kafka.bootstrap_servers} "
        f"(group {cfg.kafka.group_id}); metrics on {metrics_url(cfg.metrics.host, server.port)}",
        err=True,
    )
    try:
        totals = daemon.run()
    except TransactionTimeoutError as exc:
        server.stop()
        exit_now(f"error: {exc}", 2)
    except FinalCheckpointError as exc:  # stopped, but not cleanly: the status of a shutdown timeout
        server.stop()
        exit_now(f"error: {exc}", 3)
    except kafka.errors.KafkaError as exc:  # e.g. raised through a rebalance callback: still one line
        raise KafkaError(f"Kafka client error: {exc}") from None
    finally:
        server.stop()
    click.echo(
        f"stopped: {totals['messages']} messages, {totals['readings']} readings, {totals['windows']} windows, "
        f"{totals['alerts']} alert events, {totals['rejected']} refused",
        err=True,
    )


class _EarlySignals:
    """SIGUSR1 (every thread's stack to the log) and SIGHUP (a reload: noted, done once running) while `consume`
    starts. Their default action ends the process, and the daemon installs its handlers only once connected: a
    daemon slow to connect, already answering /healthz, died of the stack dump its operator asked for (or of a
    SIGHUP). SIGTERM keeps the CLI's handler meanwhile (it interrupts the connect). Main thread only.

    A signal that comes while the main thread has one pending goes to another thread (Linux), and Python runs its
    handler only when the main thread next wakes: connecting, that was up to --bootstrap-timeout later (a SIGTERM
    right after a SIGHUP waited the whole bootstrap). So every signal also wakes the main thread: Python writes its
    number to a wakeup socket, whichever thread took it, and a helper thread that reads it sends the main thread
    SIGWINCH (a no-op handler here; ignored by default, so one from a terminal changes nothing), which interrupts
    its wait; the pending handlers then run."""

    WAKE = "SIGWINCH"

    def __init__(self) -> None:
        import signal
        import socket
        import threading

        from anomaly.kafka.daemon import dump_stacks

        self.reload_requested = False
        self.previous: dict[int, Any] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1
        if threading.current_thread() is not threading.main_thread():
            return
        self.previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: dump_stacks())
        self.previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload)
        wake = getattr(signal, self.WAKE)
        self.previous[wake] = signal.signal(wake, lambda *_: None)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (reader, writer)
        main = threading.main_thread().ident
        assert main is not None

        def waker() -> None:
            while True:
                try:
                    got = reader.recv(64)
                except OSError:
                    return
                if not got:  # closed: connected, or the start failed
                    return
                if any(n != wake for n in got):  # (not the wake itself: it would wake for ever)
                    signal.pthread_kill(main, wake)

        threading.Thread(target=waker, name="signal-waker", daemon=True).start()

    def _reload(self, *_: Any) -> None:
        self.reload_requested = True

    def stop_waking(self) -> None:
        """Connected (the daemon's loop wakes often enough): the wakeup socket and its thread are put away."""
        import signal
        import socket

        if self._wakeup is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        wake = getattr(signal, self.WAKE)
        previous = self.previous.pop(wake)
        signal.signal(wake, signal.SIG_DFL if previous is None else previous)
        reader, writer = self._wakeup
        self._wakeup = None
        writer.close()
        reader.shutdown(socket.SHUT_RDWR)  # ends the helper's recv (closing alone does not wake it)
        reader.close()

    def restore(self) -> None:
        """The handlers from before (a failed start in a process that goes on: an in-process CLI call)."""
        import signal

        self.stop_waking()
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _only_topic(topics: tuple[str, ...]) -> str:
    """The topic `produce` writes to when --topic is not given: the one `consume` reads with the same settings."""
    from anomaly.errors import ConfigError

    if len(topics) != 1:
        raise ConfigError(
            f"kafka.topics names {len(topics)} topics ({', '.join(topics)}): pass --topic", key="kafka.topics"
        )
    return topics[0]


@click.command("produce")
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--topic",
    "-t",
    default=None,
    help="Topic to write to.  [default: the topic kafka.topics names (sensors), the one consume reads]",
)
@pipeline_option
@_kafka_options
@click.option(
    "--rate",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Messages per second (0: as fast as possible).",
)
@click.option(
    "--key-column", default=None, help="Key column for many series in one file.  [default: file name]"
)
@time_column_option
@click.option(
    "--features",
    default=None,
    callback=empty_refused("leave the option out for the model's features, or all numeric ones"),
    help="Comma-separated feature columns, sent in this order.  [default: the model's with --model, else all "
    "numeric in file order]",
)
@click.option(
    "--model",
    "-m",
    type=click.Path(dir_okay=False),
    default=None,
    help="Send the features of this bundle, in its order, also where --features names them (values go as a "
    "list, which the daemon reads by position).  [default: none]",
)
@data_options
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Readings per message (>1 sends blocks in the readings field).",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Create the topic with this many partitions if missing (0: it must exist, unless "
    "kafka.auto_create_topics, which creates it with kafka.topic_partitions).",
)
@click.option("--verbose", "-v", is_flag=True, help="Log connection details.")
@one_line_errors
def produce_cmd(
    data,
    topic,
    pipeline,
    bootstrap_servers,
    security_protocol,
    rate,
    key_column,
    time_column,
    features,
    model,
    block,
    partitions,
    verbose,
    data_overrides,
) -> None:
    """Replay CSV files into a Kafka topic in timestamp order, as the JSON messages `consume` reads.

    Values go as a JSON list in feature order, which the daemon maps to the model's features by position: pass
    --model (or --features in the model's order) when the file's columns may be ordered otherwise."""
    import kafka.errors
    from tqdm import tqdm

    from anomaly.data import load_series, plural
    from anomaly.kafka import KafkaError, clients
    from anomaly.kafka.codec import MessageFormat
    from anomaly.kafka.produce import message_count, messages, produce

    setup_logging(verbose)
    quiet_kafka(verbose)
    cfg = config_from(
        pipeline,
        {
            "kafka.bootstrap_servers": bootstrap_servers,
            "kafka.security_protocol": security_protocol,
            "data.key_column": key_column,
            "data.time_column": time_column,
            "data.features": features,
            **data_overrides,
        },
    )
    topic = topic or _only_topic(cfg.kafka.topics)
    wanted = None
    if model:
        from anomaly.bundle import load_bundle
        from anomaly.errors import ConfigError

        wanted = list(load_bundle(model).features)
        named = cfg.data.features
        if named and sorted(named) != sorted(wanted):  # the daemon would refuse every message (feature_count)
            raise ConfigError(
                f"--features / data.features ({', '.join(named)}) are not the features of {model} "
                f"({', '.join(wanted)})",
                key="data.features",
            )
    series, feats = load_series(list(data), cfg.data, wanted, warn=warn_line)  # with --model: its order
    k = cfg.kafka
    admin = clients.make_admin(k)
    try:
        if partitions or k.auto_create_topics:  # as the error for a missing topic suggests
            try:
                clients.create_topics(admin, [topic], partitions or k.topic_partitions, k.replication_factor)
            except (kafka.errors.KafkaError, OSError) as exc:  # e.g. an ACL: one line, not a traceback
                raise KafkaError(f"cannot create topic {topic} on {k.bootstrap_servers}: {exc}") from None
        clients.check_topics(
            admin,
            k,
            {topic: clients.TopicRole("topic", "", "--topic")},
            "create it first, pass --partitions N or set kafka.auto_create_topics = true",
        )
    finally:
        admin.close()
    fmt = MessageFormat(tuple(feats), k.key_field, k.time_field, k.values_field, k.readings_field)
    readings = sum(len(s) for s in series)
    total = message_count(series, block)
    producer = clients.make_producer(k, linger_ms=20)
    try:
        with tqdm(total=total, unit="msg", desc=f"-> {topic}", disable=None) as bar:
            n = produce(producer, topic, messages(series, fmt, block), rate=rate, progress=bar)
    finally:
        producer.close()
    click.echo(
        f"sent {plural(n, 'message')} ({plural(readings, 'reading')} of {plural(len(series), 'key')}) to {topic}"
    )


def metrics_url(host: str, port: int) -> str:
    """A URL a person can open: a wildcard bind address (0.0.0.0, ::) is reachable on this host's loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/metrics"


COMMANDS: list[click.Command] = [consume_cmd, produce_cmd]
