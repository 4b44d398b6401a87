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
import sys
import time
from pathlib import Path



import llama_cpp

from pbd_core.executors.llama_cpp import load_llama_cpp, resolve_gguf
from pbd_integrations.bench.llama_cpp import PREFIX_TEXT as QUESTION
from pbd_integrations.bench.llama_cpp import cpu_flags as flags_of_interest
from pbd_integrations.bench.llama_cpp import llama_cpp_step_cost, plain_llama_cpp
from pbd_integrations.bench.suite import _cpu_model


def cpu_flags() -> dict:
    return {"machine": platform.machine(), "model": _cpu_model(), "flags": flags_of_interest()}


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
    cpu = cpu_flags()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"cpu: {cpu['model']} ({cpu['machine']}); flags: {' '.join(cpu['flags']) or '-'}")
    print(f"llama-cpp-python {llama_cpp.__version__}; model {name} ({path.name}); threads {model.n_threads}; "
          f"prefix {args.prefix} tokens; median of {args.repeats} repeats after {args.warmup} warm-up"
          + ("; exact kernels" if args.exact_kernels else ""))
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)")

    steps = llama_cpp_step_cost(model, args.ks, prefix_tokens=args.prefix, repeats=args.repeats,
                                warmup=args.warmup)["rows"]
    print("\n  k | llama_decode ms | ceiling k*c(1)/c(k) | branch tok/s | via LlamaCppTree ms | tree tok/s")
    for s in steps:
        ceiling = f"{s['ceiling']:.2f}x" if s["ceiling"] is not None else "-"
        print(f"{s['k']:>3} | {s['median_ms']:>15.2f} | {ceiling:>19} | {s['tok_per_s']:>12.1f} | "
              f"{s['tree_ms']:>19.2f} | {s['k'] * 1e3 / s['tree_ms']:>10.1f}")

    chat = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt = model.tokenize(chat)
    plain = plain_llama_cpp(model, prompt, args.plain_tokens)
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
        "prefix_tokens": args.prefix,
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
