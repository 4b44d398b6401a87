"""The ``pbd`` command: ``pbd run``, ``pbd bench``, ``pbd models``.

    pbd run "Compare tea and coffee." --branch Tea --branch Coffee
    pbd bench --quick
    pbd models --json

Human-readable output goes to stdout, progress bars to stderr; ``--json``
prints one JSON document on stdout for scripts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

DEFAULT_OUT = "benchmarks/results"

_SLUGS = {"default": "smollm2-135m", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b"}


# --------------------------------------------------------------------------- helpers


@contextmanager
def _spinner(desc: str, enabled: bool) -> Iterator[None]:
    """A tqdm line with the elapsed time, refreshed in a thread while a blocking call runs."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc} {elapsed}", file=sys.stderr, leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def _load(model: str, dtype: str, show: bool, server: str | None = None, backend: str = "torch"):
    from pbd_core import ParallelBranchDecoder

    with _spinner(f"connecting to {server}" if server else f"loading {model}", show):
        t0 = time.perf_counter()
        if server:
            decoder = ParallelBranchDecoder.from_server(server, model=None if model == "default" else model)
        else:
            decoder = ParallelBranchDecoder.from_pretrained(model, dtype=dtype, backend=backend)
    if show:
        print(f"loaded {decoder!r} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return decoder


def _progress_enabled(args) -> bool:
    return not getattr(args, "json", False) and not getattr(args, "no_progress", False) and sys.stderr.isatty()


# --------------------------------------------------------------------------- pbd models


def cmd_models(args) -> int:
    from pbd_core import loading  # finds packages without importing them

    rows = [{"source": name, "model": known.display_name, "installed": loading.is_installed(name),
             "install": known.install} for name, known in loading.KNOWN_MODELS.items()]
    if args.json:
        print(json.dumps({"models": rows, "other_sources": "a local transformers folder or a .gguf file path"}, indent=1))
        return 0
    width = max(len(r["source"]) for r in rows)
    for r in rows:
        state = "installed" if r["installed"] else "not installed"
        print(f"{r['source']:<{width}}  {state:<13}  {r['model']}")
        if not r["installed"]:
            print(f"{'':<{width}}  install with: {r['install']}")
    print("\nAlso accepted by --model: a local transformers folder, or a path to a .gguf file.")
    return 0


# --------------------------------------------------------------------------- pbd run


class _LiveBranches:
    """Shows growing branches as one line each, redrawn in place on a terminal."""

    def __init__(self, out, live: bool) -> None:
        self.out = out
        self.live = live
        self.titles: list[str] = []
        self.texts: list[str] = []
        self.done: list[str | None] = []
        self.drawn = 0

    def start(self, index: int, title: str) -> None:
        while len(self.titles) <= index:
            self.titles.append("")
            self.texts.append("")
            self.done.append(None)
        self.titles[index] = title
        self._draw()

    def add(self, index: int, text: str) -> None:
        self.texts[index] += text
        self._draw()

    def end(self, index: int, reason: str) -> None:
        self.done[index] = reason
        self._draw()

    def _body(self, i: int) -> str:
        """Branch text without the ``####title:`` header the engine streams first (the title as rendered)."""
        from pbd_core.plan_format import seed_text

        header = seed_text(self.titles[i]) if self.titles[i].strip() else ""
        text = self.texts[i]
        return text[len(header):] if text.startswith(header) else text

    def _line(self, i: int) -> str:
        cols = shutil.get_terminal_size((100, 20)).columns
        head = f"[{i}] {self.titles[i]}: "
        mark = "" if self.done[i] is None else f"  ({self.done[i]})"
        body = " ".join(self._body(i).split())
        room = max(cols - len(head) - len(mark) - 1, 10)
        if len(body) > room:
            body = "…" + body[-(room - 1):]
        return head + body + mark

    def _draw(self) -> None:
        if not self.live:
            return
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # up to the first branch line
        for i in range(len(self.titles)):
            self.out.write("\x1b[2K" + self._line(i) + "\n")
        self.drawn = len(self.titles)
        self.out.flush()

    def close(self) -> None:
        """On a terminal the lines are already there; elsewhere print every branch in full once."""
        if not self.live:
            for i, title in enumerate(self.titles):
                self.out.write(f"[{i}] {title}:{self._body(i)}\n    ({self.done[i]})\n")
        self.titles, self.texts, self.done, self.drawn = [], [], [], 0


def _options(args) -> dict[str, Any]:
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "merge": args.merge,
                               "parallel": not args.sequential, "temperature": args.temperature}
    if args.branch:
        options["branches"] = args.branch
        options["max_branches"] = max(16, len(args.branch))
    if args.max_branch_tokens:
        options["max_branch_tokens"] = args.max_branch_tokens
    if args.seed is not None:
        options["seed"] = args.seed
    if getattr(args, "raw", False):
        options["output_format"] = "raw"
    return options


def cmd_run(args) -> int:
    from pbd_core import BranchEndEvent, BranchStartEvent, FinalEvent, TokenEvent
    from pbd_core.readable import ReadableEvents

    decoder = _load(args.model, args.dtype, _progress_enabled(args) or not args.json and sys.stderr.isatty(),
                    args.server, args.backend)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.question}]
    options = _options(args)
    t0 = time.perf_counter()
    if args.json:
        result = decoder.generate(messages, **options)
        seconds = time.perf_counter() - t0
        print(json.dumps(_result_json(result, seconds, decoder), indent=1))
        return 0
    out = sys.stdout
    live = _LiveBranches(out, live=out.isatty())
    result = None
    in_branches = False
    # Branches show live as one line each; the text around them is written readable (no ``####%%%%``)
    # unless --raw asks for the branch format.
    readable = None if args.raw else ReadableEvents()
    for event in decoder.stream(messages, **options):
        if readable is not None and isinstance(event, TokenEvent) and event.branch is None:
            event = readable.feed(event)[0]
        elif readable is not None:
            readable.feed(event)
        if isinstance(event, BranchStartEvent):
            if not in_branches:
                out.write("\n")
                in_branches = True
            live.start(event.index, event.title)
        elif isinstance(event, TokenEvent):
            if event.branch is not None:
                live.add(event.branch, event.text)
            elif event.text:
                text = event.text
                if in_branches:
                    live.close()
                    in_branches = False
                    out.write("\n")
                    if readable is not None:
                        text = text.lstrip("\n")  # the readable text sets the conclusion off itself
                out.write(text)
                out.flush()
        elif isinstance(event, BranchEndEvent):
            live.end(event.index, event.finish_reason)
        elif isinstance(event, FinalEvent):
            result = event.result
    if in_branches:
        live.close()
    seconds = time.perf_counter() - t0
    out.write("\n\n")
    _print_stats(result, seconds, out)
    return 0


def _result_json(result, seconds: float, decoder) -> dict[str, Any]:
    return {
        "model": decoder.model_name,
        "text": result.text,
        "raw_text": result.raw_text,
        "finish_reason": result.finish_reason,
        "parallel": result.parallel,
        "branches": [{"title": b.title, "text": b.text, "finish_reason": b.finish_reason, "block": b.block,
                      "tokens": len(b.token_ids)} for b in result.branches],
        "stats": result.stats.as_dict(),
        "wall_seconds": round(seconds, 4),
    }


def _print_stats(result, seconds: float, out) -> None:
    s = result.stats
    stages = ", ".join(f"{k} {s.stage_tokens[k]} tok / {s.stage_seconds[k]:.2f} s" for k in ("plan", "parallel", "merge"))
    out.write(
        f"--- {len(result.branches)} branches, finish: {result.finish_reason}, "
        f"{'parallel' if result.parallel else 'sequential'}\n"
        f"--- {s.generated_tokens} tokens in {seconds:.2f} s ({s.generated_tokens / seconds:.1f} tok/s, CPU), "
        f"{s.forward_passes} forward passes ({s.tokens_per_forward_pass:.2f} tok/pass), "
        f"prompt {s.prompt_tokens} tok, KV cache {s.kv_tokens} tok\n"
        f"--- stages: {stages}\n"
    )


# --------------------------------------------------------------------------- pbd bench


def _slug(model: str, decoder) -> str:
    if model in _SLUGS:
        return _SLUGS[model]
    return "".join(c if c.isalnum() or c in "-." else "-" for c in Path(str(decoder.model_name)).name.lower()) or "model"


def _task_list(args):
    from pbd_integrations.bench.tasks import generate_tasks, load_tasks

    per_size = args.per_size if args.per_size is not None else (1 if args.quick else 2)
    folder = Path(args.task_dir) if args.task_dir else None
    if folder is not None:
        tasks = load_tasks(folder, args.tasks, args.sizes, per_size)
    else:
        tasks = generate_tasks(seed=args.seed, families=args.tasks, sizes=args.sizes, per_size=per_size)
    for task in tasks:
        if args.max_branch_tokens or args.merge_tokens:
            merge = args.merge_tokens or task.max_new_tokens - task.size * task.max_branch_tokens
            task.max_branch_tokens = args.max_branch_tokens or task.max_branch_tokens
            task.max_new_tokens = task.size * task.max_branch_tokens + merge
    return tasks


def _bench_server(args, tasks, show: bool) -> int:
    """`pbd bench --server URL`: caller-branch tasks, sequential vs parallel, on the server (see bench.remote)."""
    from tqdm import tqdm

    from pbd_integrations.bench import remote, suite

    decoder = _load(args.model, args.dtype, show, args.server)
    bar = tqdm(total=1 + len(tasks), desc="bench (server)", file=sys.stderr, disable=not show)

    def progress(what: str) -> None:
        bar.set_postfix_str(what, refresh=False)
        bar.update(1)

    command = args.command or "pbd " + " ".join(shlex.quote(a) for a in args.argv)
    doc = remote.run_remote_bench(decoder, tasks, command=command, progress=progress)
    bar.close()
    path = suite.save(doc, Path(args.out) / (_slug(args.model, decoder) + f"-server{'-' + args.tag if args.tag else ''}")
                      / "results.json")
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(remote.format_report(doc))
        print(f"saved {path}")
    return 0


def _bench_llama_cpp(args, tasks, show: bool) -> int:
    """`pbd bench --backend llama.cpp`: PBD on llama.cpp against llama.cpp itself (see bench.llama_cpp)."""
    from tqdm import tqdm

    from pbd_integrations.bench import llama_cpp, suite

    decoder = _load(args.model, args.dtype, show, backend="llama.cpp")
    torch_decoder = None if args.no_torch else _load(args.model, args.dtype, show)
    ks = [1, 2, 4, 8, 16]
    total = 2 + len(ks) * (1 if torch_decoder is None else 2) + len(tasks)
    bar = tqdm(total=total, desc="bench (llama.cpp)", file=sys.stderr, disable=not show)

    def progress(what: str) -> None:
        bar.set_postfix_str(what, refresh=False)
        bar.update(1)

    command = args.command or "pbd " + " ".join(shlex.quote(a) for a in args.argv)
    doc = llama_cpp.run_llama_cpp_bench(decoder, tasks, ks=ks, torch_decoder=torch_decoder,
                                        torch_threads=args.threads, command=command, progress=progress)
    bar.close()
    path = suite.save(doc, Path(args.out) / (_slug(args.model, decoder) + f"-llama.cpp{'-' + args.tag if args.tag else ''}")
                      / "results.json")
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(llama_cpp.format_report(doc))
        print(f"saved {path}")
    return 0


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from pbd_integrations.bench import plots, report, suite
    from pbd_integrations.bench.runner import METHODS

    show = _progress_enabled(args)
    tasks = _task_list(args)
    if args.server:
        return _bench_server(args, tasks, show)
    if args.backend == "llama.cpp":
        return _bench_llama_cpp(args, tasks, show)
    decoder = _load(args.model, args.dtype, show)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    modes = args.modes
    ks = [1, 2, 4, 8, 16, 32]
    step_repeats = 7 if args.quick else 15
    total = len(ks) + len(tasks) * len(modes) + (1 if args.overhead_repeats else 0)
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not show)

    def progress(what: str) -> None:
        bar.set_postfix_str(what, refresh=False)
        bar.update(1)

    command = args.command or "pbd " + " ".join(shlex.quote(a) for a in args.argv)
    doc = suite.run_suite(
        decoder, tasks, modes=modes, methods=METHODS, ks=ks, step_cost_repeats=step_repeats,
        overhead_repeats=args.overhead_repeats, overhead_tokens=args.overhead_tokens, command=command, progress=progress,
        settings={"seed": args.seed, "quick": args.quick, "dtype_option": args.dtype,
                  "max_branch_tokens": sorted({t.max_branch_tokens for t in tasks}),
                  "max_new_tokens": sorted({t.max_new_tokens for t in tasks}),
                  "task_source": args.task_dir or f"generated (seed {args.seed})"},
    )
    bar.close()
    out = Path(args.out) / (_slug(args.model, decoder) + (f"-{args.tag}" if args.tag else ""))
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        paths = plots.plot_all(doc, out)
        if hasattr(decoder, "trace_mask"):
            trace = plots.mask_trace(decoder)
            paths.append(plots.plot_mask(trace, out / "attention_mask.png",
                                         title=f"Attention mask of a real decode with three branches ({doc['model']['name']})"))
        doc["plots"] = [p.name for p in paths]
    suite.save(doc, out / "bench.json")
    text = report.markdown(doc)
    (out / "report.md").write_text(text)
    if args.json:
        print(json.dumps({k: doc[k] for k in ("schema", "created", "command", "machine", "versions", "model",
                                              "settings", "seconds", "step_cost", "overhead", "summary")}, indent=1))
    else:
        print(text)
        print(f"results: {out / 'bench.json'}, {out / 'report.md'}" + (f", plots in {out}" if not args.no_plots else ""))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbd", description="Parallel-branch decoding: run, benchmark, list models.")
    sub = parser.add_subparsers(dest="command_name", required=True)

    def model_args(p):
        p.add_argument("--model", default="default",
                       help="'default' (SmolLM2-135M), 'qwen2.5-coder-0.5b', a transformers folder or a .gguf path")
        p.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU supports it), bfloat16, float32")
        p.add_argument("--backend", default="torch", choices=["torch", "llama.cpp"],
                       help="torch (transformers) or llama.cpp (the model's GGUF on quantized CPU kernels)")
        p.add_argument("--server", default=None, metavar="URL",
                       help="decode on a vLLM/SGLang server (e.g. http://127.0.0.1:8000/v1); --model names the "
                            "served model ('default': the server's only one)")
        p.add_argument("--json", action="store_true", help="print one JSON document for scripts")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = sub.add_parser("run", help="answer one question, branches shown as they grow")
    run.add_argument("question")
    model_args(run)
    run.add_argument("--branch", action="append", metavar="TITLE", help="a caller-given step title (repeat)")
    run.add_argument("--system", default=None, help="system prompt (default: none; see pbd_integrations.prompts)")
    run.add_argument("--max-new-tokens", type=int, default=512)
    run.add_argument("--max-branch-tokens", type=int, default=None)
    run.add_argument("--merge", choices=["reuse", "recompute"], default="recompute")
    run.add_argument("--sequential", action="store_true", help="plain token-by-token decoding (the baseline)")
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--raw", action="store_true",
                     help="print the branch-format text (####<title>:...####%%%%...) instead of the readable answer")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="benchmark sequential, batched and parallel-branch decoding")
    model_args(bench)
    bench.add_argument("--tasks", nargs="+", default=["retrieval", "multi_question", "planning"],
                       choices=["retrieval", "multi_question", "planning"])
    bench.add_argument("--sizes", nargs="+", type=int, default=[4, 8, 16], help="numbers of steps N")
    bench.add_argument("--modes", nargs="+", default=["given", "planned"], choices=["given", "planned"],
                       help="caller-given step titles and/or model-planned steps")
    bench.add_argument("--per-size", type=int, default=None, help="tasks per family and size (default 2, quick 1)")
    bench.add_argument("--seed", type=int, default=2503, help="task generator seed")
    bench.add_argument("--task-dir", default=None, help="read tasks from these JSON files (benchmarks/tasks)")
    bench.add_argument("--out", default=DEFAULT_OUT)
    bench.add_argument("--tag", default=None, help="suffix of the results folder (<out>/<model>-<tag>)")
    bench.add_argument("--quick", action="store_true", help="one task per family and size, fewer step-cost repeats")
    bench.add_argument("--max-branch-tokens", type=int, default=None, help="override the per-step token budget")
    bench.add_argument("--merge-tokens", type=int, default=None,
                       help="override the budget for plan and conclusion (on top of the steps)")
    bench.add_argument("--overhead-repeats", type=int, default=3, help="0 skips the overhead measurement")
    bench.add_argument("--overhead-tokens", type=int, default=48, help="tokens per overhead prompt")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument("--no-torch", action="store_true",
                       help="with --backend llama.cpp: skip the torch executor's branch stage (same question)")
    bench.add_argument("--command", default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=cmd_bench)

    from pbd_integrations.server.__main__ import add_arguments as serve_arguments, run as run_serve

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on the local engine (the serve extra)")
    serve_arguments(serve)
    serve.set_defaults(func=run_serve)

    models = sub.add_parser("models", help="what can be loaded offline, and whether it is installed")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"pbd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
