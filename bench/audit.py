"""What the audit trail costs the proxy: keep-alive HTTP with allowed requests logged vs not.

    .venv/bin/python bench/audit.py [--rounds 5] [--duration 6]

Two cipa-proxy processes on the shipped config, one with ``audit.log_allowed:
true`` (the default: a hash-chained record per request, one unbuffered write
each) and one with ``false`` (only blocks recorded), measured in alternating
order with the same origin, load generator and CPU pinning as bench/proxy.py.
Floor (issue 4): requests/s with log_allowed true >= 0.95x false. The search
side (1,000,000 records in <= 10 s, constant memory) is bench/audit_search.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, machine_facts, raise_on_sigterm, start_origin  # noqa: E402

import proxy as proxybench  # noqa: E402  (bench/proxy.py: the harness)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=6.0)
    mine = ap.parse_args()
    args = proxybench.parse_args(["--rounds", str(mine.rounds), "--duration", str(mine.duration)])
    raise_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="cipa-bench-audit-"))
    bench = proxybench.Bench(args, tmp)
    variants = {"logged": ["audit.log_allowed=true"], "not logged": ["audit.log_allowed=false"]}
    rounds: dict[str, list[dict]] = {k: [] for k in variants}
    try:
        if bench.pin:
            os.sched_setaffinity(0, {args.load_cpu})
        bench.origin = start_origin(bench.procs, tmp, args.load_cpu, args.origin)
        bench.write_lua()
        for i in range(mine.rounds):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))  # A/B, then B/A
            for name in order:
                p = bench.start_cipa(variants[name])
                bench.wait_ready(p)
                bench.run_load("http", p.port, 1.0)  # warm up
                rounds[name].append(bench.measure(p, "http", mine.duration))
                bench.stop(p)
    except BenchError as exc:
        print(f"bench could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        bench.procs.stop_all()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    facts = machine_facts()
    print(
        f"machine: {facts.get('nproc')} CPUs, {facts.get('cpu_model')}; proxy pinned to CPU {args.proxy_cpu}"
    )
    print("| audit.log_allowed | req/s (median) | rounds | CPU ms/req |")
    print("|---|---:|---|---:|")
    for name in variants:
        runs = ", ".join(f"{r['rps']:.0f}" for r in rounds[name])
        print(f"| {name} | {med(name, 'rps'):.0f} | {runs} | {med(name, 'cpu_ms_per_req'):.3f} |")
    ratio = med("logged", "rps") / med("not logged", "rps")
    cpu_ratio = med("not logged", "cpu_ms_per_req") / med("logged", "cpu_ms_per_req")
    verdict = "PASS" if ratio >= 0.95 else "FAIL"
    print(f"\nlogged / not logged requests/s = {ratio:.2f} (per core, from CPU per request: {cpu_ratio:.2f}); "
          f"floor >= 0.95: {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
