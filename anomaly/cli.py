"""The `anomaly` command: one click group gathering the commands of anomaly.commands.*."""

from __future__ import annotations

import click

from anomaly import __version__
from anomaly.commands import (
    bench_cmds,
    kafka_cmds,
    lifecycle_cmds,
    model_cmds,
    nasa_cmds,
    replay_cmds,
    skab_cmds,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="anomaly")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="ANOMALY_THREADS",
    help="CPU threads for PyTorch. One is fastest for streaming-sized batches and on busy machines.",
)
def main(threads: int) -> None:
    """Streaming anomaly detection for sensor streams: train an LSTM autoencoder, replay CSV backtests and run
    the Kafka consumer daemon through one scoring engine."""
    import torch

    torch.set_num_threads(threads)


for _module in (model_cmds, replay_cmds, kafka_cmds, skab_cmds, nasa_cmds, bench_cmds, lifecycle_cmds):
    for _command in _module.COMMANDS:
        main.add_command(_command)
