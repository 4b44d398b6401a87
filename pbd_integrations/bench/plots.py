"""PNG plots of a results document (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"sequential": "#7f7f7f", "batched": "#ff7f0e", "pbd_reuse": "#1f77b4", "pbd_recompute": "#2ca02c"}
MODE_STYLE = {"given": "-", "planned": "--"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sized(doc: dict[str, Any], mode: str, method: str) -> list[dict]:
    rows = [r for r in doc["summary"]["table"] if r["mode"] == mode and r["method"] == method and r["size"] != "all"]
    return sorted(rows, key=lambda r: r["size"])


def _subtitle(doc: dict[str, Any]) -> str:
    return f"{doc['model']['name']}, {doc['model']['dtype']}, CPU ({doc['machine']['cores']} cores)"


def plot_speedup(doc: dict[str, Any], path: Path) -> Path:
    """Speed-up over sequential decoding against the number of steps, per method and mode."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode in doc["settings"]["modes"]:
        for method in ("pbd_reuse", "pbd_recompute", "batched"):
            rows = [r for r in _sized(doc, mode, method) if r["speedup_vs_sequential"] is not None]
            if rows:
                ax.plot([r["size"] for r in rows], [r["speedup_vs_sequential"] for r in rows], MODE_STYLE[mode],
                        marker="o", color=COLORS[method], label=f"{method} ({mode} steps)")
    ax.axhline(1.0, color=COLORS["sequential"], lw=1, label="sequential")
    ax.set_xlabel("number of independent steps N")
    ax.set_ylabel("end-to-end speed-up over sequential (x)")
    ax.set_xscale("log", base=2)
    sizes = doc["settings"]["sizes"]
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_title("Speed-up vs number of branches\n" + _subtitle(doc), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_step_cost(doc: dict[str, Any], path: Path) -> Path:
    """Step cost (ms) against k, with the ceiling k·cost(1)/cost(k) on a second axis."""
    plt = _plt()
    rows = doc["step_cost"]["rows"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(ks, [r["median_ms"] for r in rows], marker="o", color="#1f77b4", label="median ms per step")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("new tokens per forward pass (k)")
    ax.set_ylabel("ms per forward pass", color="#1f77b4")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(ks, [r["ceiling"] for r in rows], marker="s", color="#d62728", label="ceiling k·cost(1)/cost(k)")
    ax2.plot(ks, ks, ":", color="#d62728", alpha=0.4, label="ideal (k)")
    ax2.set_ylabel("parallel-stage ceiling (x)", color="#d62728")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, fontsize=8, loc="upper left")
    ax.set_title(f"Cost of one step, {doc['step_cost']['cache_tokens']}-token cache\n" + _subtitle(doc), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tokens_per_second(doc: dict[str, Any], path: Path) -> Path:
    """Decode tokens per second of each method at each size (grouped bars), one panel per mode."""
    plt = _plt()
    modes = doc["settings"]["modes"]
    methods = [m for m in ("sequential", "batched", "pbd_reuse", "pbd_recompute") if m in doc["settings"]["methods"]]
    sizes = doc["settings"]["sizes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.0 * len(modes), 4.2), squeeze=False)
    width = 0.8 / len(methods)
    for ax, mode in zip(axes[0], modes):
        for i, method in enumerate(methods):
            by_size = {r["size"]: r["tokens_per_second"] for r in _sized(doc, mode, method)}
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(sizes))]
            ax.bar(xs, [by_size.get(s, 0.0) for s in sizes], width, color=COLORS[method], label=method)
        ax.set_xticks(range(len(sizes)), [f"N={s}" for s in sizes])
        ax.set_ylabel("generated tokens per second (wall)")
        ax.set_title(f"{mode} steps", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Decode throughput by method\n" + _subtitle(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mask(trace: dict[str, Any], path: Path, title: str = "") -> Path:
    """The attention mask of a real decode: which cache slot (column) each slot's token (row) attended to.

    ``trace``: ``{"mask": [L, L] bool, "branch": [L] int (-1 = shared), "tokens": [str], "titles": [str]}``
    as returned by `mask_trace`.
    """
    import numpy as np

    plt = _plt()
    from matplotlib.colors import ListedColormap

    mask = np.asarray(trace["mask"], dtype=bool)
    branch = np.asarray(trace["branch"])
    n = len(branch)
    # colour each allowed cell by the branch of the key slot: grey for shared text, one colour per branch
    palette = ["#ffffff", "#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    colour_index = np.where(branch < 0, 1, 2 + branch % (len(palette) - 2))
    image = np.where(mask, colour_index[None, :], 0)
    size = min(12.0, 3 + n * 0.12)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(image, cmap=ListedColormap(palette), vmin=0, vmax=len(palette) - 1, interpolation="nearest")
    ax.set_xlabel("key: cache slot attended to")
    ax.set_ylabel("query: cache slot of the token")
    # mark where each branch's slots are, on both axes
    for b, name in enumerate(trace.get("titles", [])):
        slots = np.nonzero(branch == b)[0]
        if len(slots):
            ax.text(slots[0], -1.5, name, fontsize=7, color=palette[2 + b % (len(palette) - 2)], rotation=45,
                    ha="left", va="bottom")
    ax.set_title(title, fontsize=10, pad=40)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mask_trace(decoder, *, titles=("Tea", "Coffee", "Water"), max_branch_tokens: int = 8) -> dict[str, Any]:
    """Decode a short answer with three caller-given branches and return the decoder's own mask of it."""
    prompt = [{"role": "user", "content": "Compare tea, coffee and water in a few words each."}]
    mask, branch, ids = decoder.trace_mask(prompt, branches=list(titles), max_branch_tokens=max_branch_tokens,
                                           max_new_tokens=3 * max_branch_tokens + 8)
    return {"mask": mask.tolist(), "branch": branch.tolist(),
            "tokens": [decoder.tokenizer.decode([t]) for t in ids], "titles": list(titles)}


def plot_all(doc: dict[str, Any], folder: str | Path, prefix: str = "") -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_speedup(doc, folder / f"{prefix}speedup.png"),
        plot_step_cost(doc, folder / f"{prefix}step_cost.png"),
        plot_tokens_per_second(doc, folder / f"{prefix}tokens_per_second.png"),
    ]
