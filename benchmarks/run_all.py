"""Run every benchmark (``make bench``); pass --quick for a short smoke run."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["benchmarks.bench_extract", "benchmarks.bench_similarity"]


def main() -> None:
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            print(f"skipping {name}: {err}")
            continue
        print(f"\n## {name}\n", flush=True)
        sys.argv = [name, *sys.argv[1:]]
        module.main()


if __name__ == "__main__":
    main()
