"""llama.cpp's own step-cost ceiling for parallel branches, and its plain decoding speed.

    python benchmarks/llama_cpp_step_cost.py [--model default] [--ks 1 2 4 8 16] [--prefix 200]

In one process, on one GGUF file, through llama-cpp-python's low-level API:

- **step cost**: one ``llama_decode`` call with k new tokens, one in each of k
  sequences that share a ``--prefix``-token prefix in one unified KV cache
  (``kv_unified=True``; the prefix cells belong to every sequence, stored once);
  this is exactly the parallel stage's step. The step is cropped away and
  repeated, so every repeat sees the same cache. ``ceiling(k) = k * cost(1) /
  cost(k)``: how much faster k branches can go than one sequence at best.
  The same step through `LlamaCppTree.append` is timed too (Python bookkeeping
  and the logits copy included: what the engine pays);
- **plain decoding**: greedy, one token per ``llama_decode``, after the chat
  prompt, in a fresh single-sequence context (what a user running llama.cpp
  gets), and the same through llama-cpp-python's high-level ``Llama`` class.

It prints the CPU flags, the command, the versions and the numbers (``--json``
for a machine-readable copy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


import llama_cpp

from pbd_core.executors.llama_cpp import load_llama_cpp, resolve_gguf
from pbd_core.masks import TRUNK

QUESTION = (
    "Compare rivers, mountains, deserts, forests, oceans, volcanoes, glaciers and islands: for each one, "
    "describe its climate, its wildlife, how people live there and what threatens it today. "
)


def cpu_flags() -> dict:
    info = {"machine": platform.machine(), "model": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        if key.strip() == "flags":
            flags = set(value.split())
            base = {"avx", "avx2", "fma", "f16c"}
            info["flags"] = [f for f in sorted(flags) if f.startswith(("avx512", "amx")) or f in base]
            break
    return info


def measure_step(model, prefix: list[int], k: int, repeats: int, warmup: int) -> dict:
    """Median seconds of one decode with k tokens in k sequences sharing ``prefix``."""
    tree = model.new_tree()
    tree.append(prefix, [TRUNK] * len(prefix), list(range(len(prefix))), None, None)
    block = len(prefix)
    seeds = [model.tokenize(f"####Part {i + 1}:") for i in range(k)]
    ids, branch, position = [], [], []
    for b, seed in enumerate(seeds):
        ids += seed
        branch += [b] * len(seed)
        position += list(range(block, block + len(seed)))
    tree.append(ids, branch, position, block, None)
    step_ids = [model.tokenize(" The")[0]] * k
    step_pos = [block + len(seed) for seed in seeds]
    seqs = [tree._branches[b].seq for b in range(k)]
    length = len(tree)
    raw, wrapped = [], []
    for i in range(warmup + repeats):
        # The raw call: what llama.cpp itself costs.
        t0 = time.perf_counter()
        model._decode(step_ids, step_pos, seqs, list(range(k)))
        t1 = time.perf_counter()
        for b, seq in enumerate(seqs):
            model._seq_rm(seq, step_pos[b], -1)
        # Through the tree (bookkeeping + logits copy): what the engine pays.
        t2 = time.perf_counter()
        tree.append(step_ids, list(range(k)), step_pos, block, list(range(k)))
        t3 = time.perf_counter()
        tree.crop(length)
        if i >= warmup:
            raw.append(t1 - t0)
            wrapped.append(t3 - t2)
    return {"k": k, "raw_s": statistics.median(raw), "tree_s": statistics.median(wrapped)}


def plain_decode(model, prompt: list[int], n: int) -> dict:
    """Greedy decoding in a fresh single-sequence context: tokens per second over ``n`` steps."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 2048
    params.n_batch = 2048
    params.n_threads = params.n_threads_batch = model.n_threads
    ctx = llama_cpp.llama_init_from_model(model._model, params)
    batch = llama_cpp.llama_batch_init(2048, 0, 1)
    try:

        def decode(ids, start):
            batch.n_tokens = len(ids)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(ids) - 1
            assert llama_cpp.llama_decode(ctx, batch) == 0
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(model.n_vocab,))

        logits = decode(prompt, 0)
        t0 = time.perf_counter()
        token = int(logits.argmax())
        for step in range(n):
            logits = decode([token], len(prompt) + step)
            token = int(logits.argmax())
        seconds = time.perf_counter() - t0
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return {"tokens": n, "seconds": seconds, "tok_per_s": n / seconds}


def high_level_decode(path: Path, prompt: list[int], n: int, threads: int) -> dict:
    """The same through ``llama_cpp.Llama`` (what LangChain's ChatLlamaCpp and most users run; always
    llama.cpp's default kernels: ``Llama`` has no switch for weight repacking)."""
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm.eval(prompt)
    t0 = time.perf_counter()
    count = 0
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=False):
        count += 1
        if count >= n:
            break
    seconds = time.perf_counter() - t0
    llm.close()
    return {"tokens": count, "seconds": seconds, "tok_per_s": count / seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="'default', 'qwen2.5-coder-0.5b' or a .gguf path")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--prefix", type=int, default=200, help="tokens of the shared prefix")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--plain-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--exact-kernels", action="store_true",
                        help="row-invariant kernels for K-quant weights (no repacking, no tiled matmul)")
    parser.add_argument("--no-high-level", action="store_true", help="skip the llama_cpp.Llama measurement")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)

    path, name = resolve_gguf(args.model)
    model = load_llama_cpp(path, n_threads=args.threads, n_ctx=4096, n_seq_max=max(32, max(args.ks) + 2),
                           model_name=name, exact_kernels=args.exact_kernels)
    prefix = (model.tokenize(QUESTION) * (args.prefix // 8 + 1))[: args.prefix]
    cpu = cpu_flags()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"cpu: {cpu['model']} ({cpu['machine']}); flags: {' '.join(cpu['flags']) or '-'}")
    print(f"llama-cpp-python {llama_cpp.__version__}; model {name} ({path.name}); threads {model.n_threads}; "
          f"prefix {len(prefix)} tokens; median of {args.repeats} repeats after {args.warmup} warm-up"
          + ("; exact kernels" if args.exact_kernels else ""))
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)")

    steps = [measure_step(model, prefix, k, args.repeats, args.warmup) for k in args.ks]
    cost1 = next((s for s in steps if s["k"] == 1), steps[0])
    print("\n  k | llama_decode ms | ceiling k*c(1)/c(k) | branch tok/s | via LlamaCppTree ms | tree tok/s")
    for s in steps:
        s["ceiling"] = s["k"] * cost1["raw_s"] / s["raw_s"] if cost1["k"] == 1 else None
        s["tok_per_s"] = s["k"] / s["raw_s"]
        s["tree_tok_per_s"] = s["k"] / s["tree_s"]
        ceiling = f"{s['ceiling']:.2f}x" if s["ceiling"] is not None else "-"
        print(f"{s['k']:>3} | {s['raw_s'] * 1e3:>15.2f} | {ceiling:>19} | {s['tok_per_s']:>12.1f} | "
              f"{s['tree_s'] * 1e3:>19.2f} | {s['tree_tok_per_s']:>10.1f}")

    chat = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt = model.tokenize(chat)
    plain = plain_decode(model, prompt, args.plain_tokens)
    print(f"\nplain decoding (low-level, one sequence, greedy, {plain['tokens']} tokens): "
          f"{plain['tok_per_s']:.1f} tok/s")
    high = None
    if not args.no_high_level:
        high = high_level_decode(path, prompt, args.plain_tokens, model.n_threads)
        print(f"plain decoding (llama_cpp.Llama.generate, greedy, {high['tokens']} tokens, default kernels): "
              f"{high['tok_per_s']:.1f} tok/s")
    result = {
        "command": "python " + " ".join(sys.argv),
        "cpu": cpu,
        "llama_cpp_python": llama_cpp.__version__,
        "model": name,
        "gguf": path.name,
        "threads": model.n_threads,
        "prefix_tokens": len(prefix),
        "exact_kernels": args.exact_kernels,
        "load_average_after": os.getloadavg()[0],
        "steps": steps,
        "plain": plain,
        "plain_high_level": high,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
