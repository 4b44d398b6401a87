"""``pbd serve`` (also ``python -m pbd_integrations.server``): load a model, serve it over HTTP.

    pbd serve --model default --host 127.0.0.1 --port 8000

``--port 0`` takes a free port. The URL and how to point clients at it are
printed on stdout once the model is loaded and the socket is listening.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pbd serve``."""
    parser.add_argument("--model", default="default",
                        help="'default' (SmolLM2-135M), 'qwen2.5-coder-0.5b', a transformers folder or a .gguf path")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU supports it), bfloat16, float32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the model's name; 'default' is always accepted)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error}") from error
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def banner(url: str, model: str) -> str:
    """What ``pbd serve`` prints once it listens: the URL and how to point clients at it."""
    return "\n".join([
        f"pbd serve: {model} at {url}",
        f"  OpenAI:    OpenAI(base_url=\"{url}\", api_key=\"unused\")",
        f"  LangChain: ChatOpenAI(base_url=\"{url}\", api_key=\"unused\", model=\"{model}\")",
        f"  PBD:       ParallelBranchDecoder.from_server(\"{url}\")",
        "  Ctrl-C stops the server.",
    ])


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise ValueError(f"pbd serve needs the serve extra ({error.name} is missing): "
                         "pip install 'parallel-branch-decoding[serve]'") from error
    from pbd_core import ParallelBranchDecoder

    t0 = time.perf_counter()
    decoder = ParallelBranchDecoder.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    print(f"loaded {decoder!r} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    app = create_app(decoder, model_name=args.served_model_name)
    sock = _listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}/v1"
    print(banner(url, app.state.served.name), flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbd serve", description="An OpenAI-compatible server on the local engine.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (ValueError, FileNotFoundError) as error:
        print(f"pbd serve: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
