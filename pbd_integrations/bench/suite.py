"""The whole benchmark of ``pbd bench``: step cost, tasks x modes x methods, overhead; one JSON."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from .memory import kv_bytes_per_token
from .overhead import measure_overhead
from .runner import METHODS, MODES, run_bench
from .step_cost import DEFAULT_KS, measure_step_cost
from .tasks import DEFAULT_SEED, FAMILIES, Task

SCHEMA = "pbd-bench/1"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _memory_bytes() -> int | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine slows every method."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    flags = _cpu_flags()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_bytes(),
        "avx512_bf16": "avx512_bf16" in flags,
        "cuda": torch.cuda.is_available(),
    }


def _git_commit() -> str | None:
    """The commit of the source tree the engine was imported from, with ``+dirty`` for local changes."""
    import subprocess

    folder = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "core", "pbd_integrations"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    return {
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "parallel-branch-decoding": _version("parallel-branch-decoding"),
        "numpy": _version("numpy"),
    }


def model_info(decoder) -> dict[str, Any]:
    model = decoder.model
    param = next(model.parameters())
    return {
        "source": str(getattr(decoder, "source", None)),
        "name": getattr(decoder, "model_name", None) or type(model).__name__,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).replace("torch.", ""),
        "device": str(param.device),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "context_window": getattr(decoder, "context_window", None),
        "kv_bytes_per_token": kv_bytes_per_token(model),
    }


def run_suite(
    decoder,
    tasks: list[Task],
    *,
    modes: list[str] | tuple[str, ...] = MODES,
    methods: list[str] | tuple[str, ...] = METHODS,
    ks: list[int] | tuple[int, ...] = DEFAULT_KS,
    step_cost_repeats: int = 15,
    overhead_repeats: int = 3,
    overhead_tokens: int = 48,
    settings: dict[str, Any] | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure everything and return the results document (see `benchmarks/README.md` for its fields)."""
    started = time.perf_counter()
    load_before = _loadavg()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    step_cost = measure_step_cost(decoder.model, ks=ks, repeats=step_cost_repeats,
                                  progress=(lambda: progress("step cost")) if progress else None)
    timings["step_cost"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    bench = run_bench(decoder, tasks, modes=modes, methods=methods, step_cost=step_cost, progress=progress)
    timings["tasks"] = round(time.perf_counter() - t0, 2)

    overhead = None
    if overhead_repeats:
        t0 = time.perf_counter()
        overhead = measure_overhead(decoder, repeats=overhead_repeats, max_new_tokens=overhead_tokens)
        timings["overhead"] = round(time.perf_counter() - t0, 2)
        if progress:
            progress("overhead")
        bench["summary"]["goals"].append(_overhead_goal(overhead))
    timings["total"] = round(time.perf_counter() - started, 2)
    return {
        "schema": SCHEMA,
        "created": created,
        "command": command,
        "timing_note": "CPU wall-clock timings on the machine below; ratios carry over, absolute times do not",
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": _loadavg()},
        "versions": versions(),
        "model": model_info(decoder),
        "settings": {
            "modes": list(modes),
            "methods": list(methods),
            "families": sorted({t.family for t in tasks}, key=list(FAMILIES).index),
            "sizes": sorted({t.size for t in tasks}),
            "tasks": len(tasks),
            "greedy": True,
            "step_cost_ks": list(ks),
            "step_cost_repeats": step_cost_repeats,
            "overhead_repeats": overhead_repeats,
            **(settings or {}),
        },
        "seconds": timings,
        "step_cost": step_cost,
        "overhead": overhead,
        "summary": bench["summary"],
        "checks": bench["checks"],
        "runs": bench["runs"],
        "tasks": [t.to_dict() for t in tasks],
    }


def _overhead_goal(overhead: dict[str, Any]) -> dict[str, Any]:
    return {
        "goal": "overhead on prompts with no parallel structure under 5% (engine vs model.generate)",
        "target": 0.05, "measured": overhead["overhead"],
        "met": overhead["overhead"] is not None and overhead["overhead"] < 0.05,
        "detail": f"plain decoding through the engine (parallel=False): {overhead['sequential_overhead']}",
    }


def resummarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Recompute the summary and goals of a saved document from its runs (after a change to the summary code)."""
    from .runner import summarize
    from .tasks import Task, score, split_steps

    tasks = {t["id"]: Task.from_dict(t) for t in doc["tasks"]}
    for run in doc["runs"]:  # score again from the saved step texts
        steps = {b["title"]: b["text"] for b in run["branches"]} or split_steps(run["text"])[0]
        run["quality"] = score(tasks[run["task"]], steps)
    doc["summary"] = summarize(doc["runs"], doc["checks"], doc["step_cost"])
    if doc.get("overhead"):
        doc["summary"]["goals"].append(_overhead_goal(doc["overhead"]))
    return doc


def save(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path


__all__ = ["DEFAULT_SEED", "machine_info", "model_info", "run_suite", "save", "versions"]
