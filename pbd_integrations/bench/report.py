"""Markdown tables from a results document (the JSON `pbd bench` writes)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _redundant(doc: dict[str, Any], row: dict[str, Any]) -> bool:
    """The "all sizes" row repeats the only size when there is one."""
    return row["size"] == "all" and len(doc["settings"]["sizes"]) == 1


def step_cost_table(doc: dict[str, Any]) -> str:
    sc = doc["step_cost"]
    rows = [[r["k"], r["median_ms"], r["ceiling"]] for r in sc["rows"]]
    return _table(["k new tokens", "median ms / step", "ceiling k·cost(1)/cost(k)"], rows)


def method_table(doc: dict[str, Any], mode: str) -> str:
    rows = []
    for r in doc["summary"]["table"]:
        if r["mode"] != mode or _redundant(doc, r):
            continue
        rows.append([
            r["size"], r["method"], r["tasks"], r["wall_seconds"], r["tokens_per_second"],
            r["forward_passes"], r["tokens_per_forward_pass"], r["kv_tokens_mean"],
            round(r["kv_bytes_mean"] / 2**20, 2), r.get("accuracy"), r.get("value_accuracy"),
            r["speedup_vs_sequential"], r.get("speedup_vs_batched"),
        ])
    header = ["N steps", "method", "tasks", "wall s", "tok/s", "fwd passes", "tok/pass", "KV tokens",
              "KV MiB", "accuracy", "values right", "speedup vs seq", "speedup vs batched"]
    return _table(header, rows)


def stage_table(doc: dict[str, Any], mode: str) -> str:
    rows = []
    for r in doc["summary"]["table"]:
        if r["mode"] != mode or _redundant(doc, r):
            continue
        s = r["stage_seconds"]
        rows.append([r["size"], r["method"], s["plan"], s["parallel"], s["merge"], r.get("forward_seconds"),
                     r.get("loop_seconds"),
                     r.get("parallel_live_branches"), r.get("parallel_ms_per_pass"),
                     r.get("parallel_speedup"), r.get("parallel_ceiling"), r.get("parallel_efficiency")])
    header = ["N steps", "method", "plan s", "parallel s", "merge s", "in model.forward s", "outside forward s",
              "live branches / pass",
              "ms / parallel pass", "parallel-stage speedup", "ceiling", "efficiency"]
    return _table(header, rows)


def goals_table(doc: dict[str, Any]) -> str:
    rows = [[g["goal"], g["target"], g["measured"], g["met"], g.get("detail", "")] for g in doc["summary"]["goals"]]
    return _table(["goal (DESIGN.md section 5)", "target", "measured", "met", "detail"], rows)


def checks_summary(doc: dict[str, Any]) -> str:
    same = sum(c.get("batched_pbd_branches_identical", 0) for c in doc["checks"])
    total = sum(c.get("batched_pbd_branches_total", 0) for c in doc["checks"])
    merges = [c["reuse_recompute_branches_identical"] for c in doc["checks"] if "reuse_recompute_branches_identical" in c]
    return (f"Branches token-identical between batched expansion and PBD: {same}/{total}; "
            f"reuse and recompute decoded identical branches in {sum(merges)}/{len(merges)} task runs.")


def overhead_table(doc: dict[str, Any]) -> str:
    ov = doc.get("overhead")
    if not ov:
        return ""
    rows = [[r["prompt"], r["generated_tokens"], r["planned"], r["engine_seconds"],
             r["engine_sequential_seconds"], r["hf_generate_seconds"]] for r in ov["rows"]]
    table = _table(["prompt", "tokens", "model planned", "engine s", "engine parallel=False s", "model.generate s"], rows)
    return table + f"\n\nOverhead of the engine over `model.generate`: {_fmt(ov['overhead'], 4)} " \
                   f"(plain decoding through the engine: {_fmt(ov['sequential_overhead'], 4)})."


def markdown(doc: dict[str, Any]) -> str:
    """The whole report: setup, step cost, per-mode tables, stages, goals, overhead, exactness."""
    m, mach, v = doc["model"], doc["machine"], doc["versions"]
    parts = [
        f"## {m['name']} ({m['dtype']}, {m['parameters'] / 1e6:.0f}M parameters)",
        f"CPU timings: {mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads, "
        f"torch {v['torch']}, transformers {v['transformers']}; {doc['created']}. "
        f"Run took {doc['seconds']['total']:.0f} s.",
        f"Reproduce: `{doc['command']}`" if doc.get("command") else "",
        "### Cost of one decode step with k new tokens (" + f"{doc['step_cost']['cache_tokens']}-token cache)",
        step_cost_table(doc),
    ]
    for mode in doc["settings"]["modes"]:
        title = "caller-given steps" if mode == "given" else "model-planned steps"
        parts += [f"### End to end, {title}", method_table(doc, mode),
                  f"#### Stages, {title}", stage_table(doc, mode)]
    parts += ["### Goals", goals_table(doc), "### Exactness", checks_summary(doc)]
    if doc.get("overhead"):
        parts += ["### Overhead on prompts with no parallel structure", overhead_table(doc)]
    return "\n\n".join(p for p in parts if p) + "\n"
