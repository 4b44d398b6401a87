"""Smoke test of ``pbd bench`` on a tiny random model: two task families, every JSON field, exactness."""

from __future__ import annotations

import json

import pytest

from pbd_integrations.cli import main

RUN_FIELDS = {"forward_seconds", "loop_seconds",
    "task", "family", "size", "mode", "method", "wall_seconds", "peak_rss_bytes", "rss_growth_bytes",
    "kv_bytes_per_token", "generated_tokens", "forward_passes", "tokens_per_forward_pass", "tokens_per_second",
    "kv_tokens", "kv_bytes", "finish_reason", "parallel", "branches", "text", "quality",
}
PBD_FIELDS = {"stats", "parallel_tokens_per_second", "parallel_ms_per_pass", "parallel_tokens_per_pass"}
SUMMARY_FIELDS = {"forward_seconds", "loop_seconds",
    "mode", "size", "method", "tasks", "wall_seconds", "generated_tokens", "tokens_per_second", "forward_passes",
    "tokens_per_forward_pass", "kv_tokens_mean", "kv_bytes_mean", "peak_rss_bytes", "stage_seconds",
    "speedup_vs_sequential",
}
STAT_FIELDS = {"prompt_tokens", "generated_tokens", "forward_passes", "tokens_per_forward_pass", "stage_tokens",
               "stage_seconds", "stage_forward_passes", "max_live_branches", "kv_tokens"}


@pytest.fixture(scope="module")
def bench_doc(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    code = main([
        "bench", "--model", str(tiny_model_dir), "--dtype", "float32", "--tasks", "retrieval", "multi_question",
        "--sizes", "4", "--quick", "--max-branch-tokens", "6", "--merge-tokens", "8",
        "--overhead-repeats", "1", "--overhead-tokens", "6", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    folder = out / tiny_model_dir.name
    return json.loads((folder / "bench.json").read_text()), folder


def test_document_has_every_field(bench_doc):
    doc, folder = bench_doc
    assert doc["schema"] == "pbd-bench/1"
    for key in ("created", "command", "machine", "versions", "model", "settings", "seconds", "step_cost",
                "overhead", "summary", "checks", "runs", "tasks", "plots"):
        assert key in doc, key
    assert {"cpu", "cores", "torch_threads", "avx512_bf16"} <= set(doc["machine"])
    assert {"python", "torch", "transformers"} <= set(doc["versions"])
    assert doc["model"]["dtype"] == "float32" and doc["model"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert doc["settings"]["families"] == ["retrieval", "multi_question"]
    assert [r["k"] for r in doc["step_cost"]["rows"]] == [1, 2, 4, 8, 16, 32]
    assert all(r["median_ms"] > 0 and r["ceiling"] > 0 for r in doc["step_cost"]["rows"])

    methods = {"sequential", "batched", "pbd_reuse", "pbd_recompute"}
    given = [r for r in doc["runs"] if r["mode"] == "given"]
    assert {(r["task"], r["method"]) for r in given} == {(t, m) for t in ("retrieval-4-0", "multi_question-4-0") for m in methods}
    for run in doc["runs"]:
        assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
        assert run["wall_seconds"] > 0 and run["branches"] if run["mode"] == "given" else True
        assert run["wall_seconds"] > 0 and run["generated_tokens"] > 0 and run["kv_bytes"] > 0
        if run["method"] != "batched":
            assert PBD_FIELDS <= set(run) and STAT_FIELDS <= set(run["stats"])
        assert run["quality"]["kind"] == "exact_match" and run["quality"]["total"] == 4
    for row in doc["summary"]["table"]:
        assert SUMMARY_FIELDS <= set(row), SUMMARY_FIELDS - set(row)
    assert any(g["goal"].startswith("overhead") for g in doc["summary"]["goals"])
    for name in doc["plots"]:
        assert (folder / name).stat().st_size > 1000
    assert "attention_mask.png" in doc["plots"]
    assert (folder / "report.md").read_text().startswith("## ")


def test_methods_decode_the_same_branches(bench_doc):
    """Greedy fp32: batched expansion and both merge modes must decode token-identical branches."""
    doc, _ = bench_doc
    given = [c for c in doc["checks"] if c["mode"] == "given"]
    assert len(given) == 2
    for check in given:
        assert check["batched_pbd_branches_total"] == 4
        assert "pbd_reuse_vs_sequential_agreement" in check
        assert check["batched_pbd_branches_identical"] == 4, check
        assert check["reuse_recompute_branches_identical"], check
    runs = {(r["task"], r["method"]): r for r in doc["runs"] if r["mode"] == "given"}
    for task in ("retrieval-4-0", "multi_question-4-0"):
        texts = {m: [b["text"] for b in runs[task, m]["branches"]] for m in ("batched", "pbd_reuse", "pbd_recompute")}
        assert texts["batched"] == texts["pbd_reuse"] == texts["pbd_recompute"]
        # the parallel stage really ran in parallel: more than one token per forward pass there
        assert runs[task, "pbd_reuse"]["parallel_tokens_per_pass"] > 1


def test_kv_cache_holds_one_prefix(bench_doc):
    """PBD keeps one copy of the prefix; batched pays one per branch."""
    doc, _ = bench_doc
    runs = {(r["task"], r["method"]): r for r in doc["runs"] if r["mode"] == "given"}
    for task in ("retrieval-4-0", "multi_question-4-0"):
        assert runs[task, "pbd_reuse"]["kv_tokens"] < runs[task, "batched"]["kv_tokens"]
