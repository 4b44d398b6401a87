"""The machine header the benchmark scripts share: what a timing was measured on, and how to re-run it.

`benchmarks/parallel_tool_calls.py` and `benchmarks/concurrent_requests.py` both open their report with
the command, the CPU's vector-unit flags, the model, its dtype and torch's thread count, close it with the
load average before and after the run, and print the same lines about them::

    report = {**header("parallel_tool_calls.py", argv, decoder), ...numbers..., **footer(load_before)}
    print(machine_line(report))
    ...
    print_closing(report)

``load_before = loadavg()`` is taken by the script where its measured work starts.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from pbd_integrations.bench.llama_cpp import cpu_flags
from pbd_integrations.bench.suite import _loadavg


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    return _loadavg()


def header(script: str, argv: list[str] | None, decoder: Any) -> dict[str, Any]:
    """The report's first keys: ``command`` (to reproduce it), ``cpu_flags``, ``model``, ``dtype``, ``torch_threads``."""
    return {
        "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_flags": cpu_flags(),
        "model": decoder.model_name,
        "dtype": str(decoder.mask_dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
    }


def footer(load_before: list[float] | None) -> dict[str, Any]:
    """The report's last key: the load average before the run and now."""
    return {"load_average": {"before": load_before, "after": loadavg()}}


def machine_line(report: dict[str, Any]) -> str:
    """``<model>, <dtype>, <n> torch threads; cpu flags: ...``"""
    return (f"{report['model']}, {report['dtype']}, {report['torch_threads']} torch threads; "
            f"cpu flags: {' '.join(report['cpu_flags'])}")


def closing_lines(report: dict[str, Any]) -> list[str]:
    """The load average before and after the run, and the command that reproduces it."""
    load = report["load_average"]
    return [f"load average before {load['before']}, after {load['after']}", "reproduce: " + report["command"]]


def print_closing(report: dict[str, Any]) -> None:
    for line in closing_lines(report):
        print(line)
