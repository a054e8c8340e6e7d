"""Engine benchmark: decisions per second and per-decision latency on a URL mix.

Usage: python bench/engine.py [--config config.yaml] [--n 200000] [--rounds 5]

The mix is drawn from the shipped rules themselves (so it hits list entries,
URL prefixes and patterns) plus hosts no rule names (the common case on a
school network), over a few thousand distinct hosts and a few client
addresses, decided through ``Engine.decide`` exactly as the proxy calls it.
Prints a Markdown table for bench/RESULTS.md. Floors (issue 2): >= 100,000
decisions/s on one core and p99 <= 50 us.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import load_config  # noqa: E402
from proxy.engine import Engine  # noqa: E402
from proxy.model import Request  # noqa: E402

sys.path.append(str(ROOT / "bench"))  # after the repository: bench/proxy.py must not shadow it
from common import self_rss_mb  # noqa: E402


def url_mix(engine: Engine, n_hosts: int, rng: random.Random) -> list[Request]:
    rules = engine.rules
    domains = rng.sample(sorted(rules.domains), min(n_hosts // 3, len(rules.domains)))
    url_hosts = rng.sample(sorted(rules.urls), min(n_hosts // 10, len(rules.urls)))
    words = [
        "news",
        "mail",
        "docs",
        "cdn",
        "static",
        "api",
        "img",
        "video",
        "maps",
        "shop",
        "learn",
        "apps",
    ]
    tlds = ["com", "org", "net", "edu", "gov", "co.uk", "io", "us", "k12.ca.us"]
    unknown = [
        f"{rng.choice(words)}{i}.{rng.choice(['', 'www.'])}example{i % 97}.{rng.choice(tlds)}"
        for i in range(n_hosts // 2)
    ]
    paths = [
        "/",
        "/index.html",
        "/search?q=math+homework",
        "/watch?v=abc123",
        "/a/b/c.js",
        "/img/logo.png?v=3",
    ]
    clients = ["10.1.2.3", "10.20.30.40", "192.168.5.6", "172.16.0.9"]
    reqs: list[Request] = []
    for i in range(50_000):
        r = rng.random()
        if r < 0.6:
            host = rng.choice(unknown)
        elif r < 0.85:
            d = rng.choice(domains)
            host = d if rng.random() < 0.5 else "www." + d
        else:
            host = rng.choice(url_hosts)
        path = rng.choice(paths)
        if host in rules.urls and rng.random() < 0.5:
            path = rules.urls[host][0][0] + "x"
        reqs.append(
            Request(
                host=host, path=path, scheme=rng.choice(["http", "https"]), client=clients[i % 4]
            )
        )
    return reqs


def run_round(engine: Engine, reqs: list[Request], n: int) -> tuple[float, list[int]]:
    decide = engine.decide
    m = len(reqs)
    # throughput: a tight loop, as the proxy calls it
    start = time.perf_counter()
    for i in range(n):
        decide(reqs[i % m])
    rate = n / (time.perf_counter() - start)
    # latency: each call timed on its own (timer overhead included, so this is an upper bound)
    clock = time.perf_counter_ns
    lat = []
    for i in range(min(n, 100_000)):
        r = reqs[(i * 7) % m]
        t0 = clock()
        decide(r)
        lat.append(clock() - t0)
    return rate, lat


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    gc.collect()
    rss0 = self_rss_mb()
    t0 = time.perf_counter()
    engine = Engine.build(load_config(args.config))
    load_s = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # as the proxy should after loading: the GC then never walks the rule tables
    rss1 = self_rss_mb()
    entries = sum(i.entries for i in engine.rules.categories.values())

    rng = random.Random(2026)
    reqs = url_mix(engine, 6000, rng)
    actions = [engine.decide(r).action for r in reqs[:20000]]
    blocked_share = actions.count("block") / len(actions)
    for r in reqs[:20000]:  # warm the canonicalisation caches as real traffic would
        engine.decide(r)

    rates, p50s, p99s = [], [], []
    for _ in range(args.rounds):
        rate, lat = run_round(engine, reqs, args.n)
        lat.sort()
        rates.append(rate)
        p50s.append(lat[len(lat) // 2] / 1000)
        p99s.append(lat[int(len(lat) * 0.99)] / 1000)

    rate, p50, p99 = statistics.median(rates), statistics.median(p50s), statistics.median(p99s)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(
        f"machine: {platform.node()} · {os.cpu_count()} cores · {cpu} · Python {platform.python_version()}"
    )
    print(f"rules: {entries} entries in {len(engine.rules.categories)} categories; "
          f"load {load_s:.2f} s; RSS +{rss1 - rss0:.0f} MB (total {rss1:.0f} MB)")  # fmt: skip
    print(
        f"mix: {len(reqs)} requests, {blocked_share:.0%} blocked; {args.rounds} rounds of {args.n} decisions\n"
    )
    print("| metric | median | rounds | floor | verdict |")
    print("|---|---|---|---|---|")
    print(f"| decisions/s (one core) | {rate:,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} | >= 100,000 | "
          f"{'PASS' if rate >= 100_000 else 'FAIL'} |")  # fmt: skip
    print(f"| p50 latency | {p50:.1f} µs | {', '.join(f'{x:.1f}' for x in p50s)} | | |")
    print(f"| p99 latency | {p99:.1f} µs | {', '.join(f'{x:.1f}' for x in p99s)} | <= 50 µs | "
          f"{'PASS' if p99 <= 50 else 'FAIL'} |")  # fmt: skip
    print(f"| rules load time | {load_s:.2f} s | | | |")
    print(f"| rules RSS | {rss1 - rss0:.0f} MB | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
