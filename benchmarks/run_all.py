"""Run every benchmark in benchmarks/ (each a ``bench_*.py`` script) one after another; `make bench`.

Each script writes its own section of benchmarks/RESULTS.md. Benchmarks are long (the whole set takes hours
on 2 cores) and some need extras (TRL for bench_rl_step, Ray for bench_warp_memory --ray, ../shared data for
bench_reward and the offline configs): pick with ``--only``, list with ``--list``.

    .venv/bin/python benchmarks/run_all.py [--list] [--only bench_load bench_rloo ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    ap.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these benchmarks")
    args = ap.parse_args()
    names = benchmarks()
    if args.list:
        print("\n".join(names))
        return 0
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; --list shows them", file=sys.stderr)
        return 2
    failed = []
    for name in args.only or names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parent)
        print(f"== {name}: exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
