"""A real vLLM server for the tests marked ``server``.

Start-up takes about 3 minutes on 2 CPU cores, so a running server is reused when
``PBD_TEST_SERVER_URL`` is set (``python scripts/vllm_server.py start`` prints the line to export).
Otherwise one server is started for the whole session with that script and stopped at the end.
The only reason to skip is a vLLM venv that cannot be installed; a server that fails to start is
an error, with its log's tail in the message.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vllm_server.py"


def _tail(process: subprocess.CompletedProcess, lines: int = 40) -> str:
    return "\n".join((process.stdout + process.stderr).splitlines()[-lines:])


def _wait_until_ready(url: str, seconds: float = 900.0) -> None:
    """A server started with ``--no-wait`` may still be warming up (about 3 minutes): wait for it."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            log = os.environ.get("PBD_TEST_SERVER_LOG")
            tail = Path(log).read_text(errors="replace").splitlines()[-40:] if log and Path(log).is_file() else []
            pytest.fail(f"the server at {url} did not answer /health within {seconds:.0f} s\n" + "\n".join(tail),
                        pytrace=False)
        time.sleep(2)


@pytest.fixture(scope="session")
def vllm_server_url():
    """Base URL of a vLLM server (no trailing slash, no ``/v1``)."""
    url = os.environ.get("PBD_TEST_SERVER_URL")
    if url:
        _wait_until_ready(url.rstrip("/"))
        yield url.rstrip("/")
        return
    install = subprocess.run([sys.executable, str(SCRIPT), "install"], capture_output=True, text=True)
    if install.returncode:
        pytest.skip(f"the vLLM venv could not be installed by {SCRIPT.name} install:\n{_tail(install)}")
    pidfile = Path(tempfile.mkdtemp(prefix="pbd-vllm-")) / "server.pid"  # ours alone: stop only this one
    start = subprocess.run([sys.executable, str(SCRIPT), "start", "--pidfile", str(pidfile)],
                           capture_output=True, text=True)
    exports = [line for line in start.stdout.splitlines() if line.startswith("export PBD_TEST_SERVER_URL=")]
    if start.returncode or not exports:
        pytest.fail(f"{SCRIPT.name} start failed (exit {start.returncode}):\n{_tail(start, 80)}", pytrace=False)
    try:
        yield exports[-1].split("=", 1)[1]
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--pidfile", str(pidfile)], capture_output=True)
