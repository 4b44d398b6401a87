"""Benchmark suite of parallel-branch decoding (``pbd bench``).

- `tasks`: seeded task generator, task files, exact-match scoring;
- `batched`: the Skeleton-of-Thought-style padded batch baseline (plain transformers);
- `step_cost`: the cost of one k-token step, and the parallel stage's ceiling;
- `runner`: every task with every method, interleaved; summary and goals;
- `overhead`: the engine against ``model.generate`` on prompts with no parallel structure;
- `suite`: all of it into one results document with machine, versions, model and settings;
- `report`, `plots`: markdown tables and PNG plots from that document.

Only `tasks` and `report` import without torch.
"""
