"""Regenerate the benchmark task files from their seed.

    python benchmarks/make_tasks.py            # writes benchmarks/tasks/*.json
    python benchmarks/make_tasks.py --check    # fails if the shipped files differ from the generator

`pbd bench` generates the same tasks in memory from the same seed; pass
``--task-dir benchmarks/tasks`` to run from these files instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pbd_integrations.bench.tasks import DEFAULT_SEED, DEFAULT_SIZES, FAMILIES, generate_tasks, save_tasks

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--per-size", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "tasks"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    tasks = generate_tasks(seed=args.seed, families=FAMILIES, sizes=DEFAULT_SIZES, per_size=args.per_size)
    if args.check:
        for family in FAMILIES:
            shipped = json.loads((Path(args.out) / f"{family}.json").read_text())
            fresh = [t.to_dict() for t in tasks if t.family == family]
            if shipped != fresh:
                print(f"{family}.json differs from the generator (seed {args.seed})", file=sys.stderr)
                return 1
        print(f"task files match the generator (seed {args.seed})")
        return 0
    for path in save_tasks(tasks, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
