"""The market source of the local runners: the exchange simulator as a background process, or the configured API.

`market_source(settings)` reuses a simulator already answering on SIMULATOR_PORT or starts `python -m etl
simulator` (PIPELINE_SOURCE=simulator); with PIPELINE_SOURCE=coinbase it starts nothing. `stop()` ends only a
process it started.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from etl.errors import ConfigError
from etl.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


@dataclass
class SimulatorProcess:
    url: str
    proc: subprocess.Popen | None  # None: someone else's simulator, reused and left running

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM, not SIGINT: a process started from a background shell job inherits SIGINT ignored
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _answers(url: str) -> bool:
    import requests

    try:
        r = requests.get(f"{url}/products", timeout=2)
        return r.status_code == 200 and isinstance(r.json(), list)
    except (requests.RequestException, ValueError):
        return False


def port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_simulator(settings: Settings, wait_s: float = 30.0) -> SimulatorProcess:
    """Reuse a simulator answering on SIMULATOR_PORT, else start `python -m etl simulator` in the background."""
    port = settings.simulator_port
    url = f"http://127.0.0.1:{port}"
    if _answers(url):
        log.info("reusing the simulator already running at %s", url)
        return SimulatorProcess(url, None)
    if port_busy(port):
        raise ConfigError(f"port {port} is in use by something that is not the simulator: "
                          f"set SIMULATOR_PORT to a free port")
    log_path = settings.state_dir / "simulator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "etl", "simulator", "--port", str(port)], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"the simulator exited with code {proc.returncode}: see {log_path}")
        if _answers(url):
            return SimulatorProcess(url, proc)
        time.sleep(0.3)
    proc.kill()
    raise ConfigError(f"the simulator did not answer on {url} within {wait_s:.0f}s: see {log_path}")


def market_source(settings: Settings) -> SimulatorProcess:
    """Where the DAGs fetch from: the simulator (reused or started) when PIPELINE_SOURCE=simulator; with
    PIPELINE_SOURCE=coinbase the configured Exchange API (COINBASE_API_URL, default the real one), nothing started."""
    if settings.source == "simulator":
        return ensure_simulator(settings)
    return SimulatorProcess(settings.coinbase_api_url, None)

