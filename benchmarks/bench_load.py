"""Load time of the bundled policy: cold (GGUF dequantised and cached) and cached (safetensors folder).

Each measurement runs in a fresh process so that nothing is warm but the OS page cache; the cold one uses an
empty WARPRL_CACHE.

    .venv/bin/python benchmarks/bench_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _results import machine, write_section

CHILD = ("import time; t = time.perf_counter(); from warprl.models import load_policy; import transformers; "
         "t1 = time.perf_counter(); load_policy('smollm2-135m'); print(t1 - t, time.perf_counter() - t1)")


def timed_load(cache: str) -> tuple[float, float]:
    """(seconds to import warprl and transformers, seconds of load_policy) in a fresh process."""
    env = {**os.environ, "WARPRL_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    imp, load = out.stdout.strip().splitlines()[-1].split()
    return float(imp), float(load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cold, cached, imports = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            for bucket in (cold, cached):
                imp, load = timed_load(cache)
                imports.append(imp)
                bucket.append(load)
    md = (f"{time.strftime('%Y-%m-%d')} · {machine()} · `python benchmarks/bench_load.py --repeats {args.repeats}`\n\n"
          "`load_policy('smollm2-135m')` in a fresh process, median of "
          f"{args.repeats} (importing warprl and transformers before it: {statistics.median(imports):.1f} s):\n\n"
          "| load | seconds |\n|---|---:|\n"
          f"| cold: GGUF Q4_1 dequantised, saved as a safetensors folder in WARPRL_CACHE | {statistics.median(cold):.1f} |\n"
          f"| cached: that folder | {statistics.median(cached):.2f} |\n")
    print(md)
    write_section("Bundled policy load time", md)


if __name__ == "__main__":
    main()
