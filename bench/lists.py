"""List-scale benchmark: the compact index with 5,000,000 realistic domains, and E2Guardian.

Usage::

    .venv/bin/python bench/lists.py                  # 5M names; E2Guardian too (apt-get install -y e2guardian)
    .venv/bin/python bench/lists.py --n 1000000 --no-e2guardian

The real UT1 ``adult/domains`` (4.6 million names) cannot be fetched here, so a
list shaped like it is generated from statistics of the UT1 lists the
repository ships (``rules/lists/ut1``): top-level domains of the adult-adjacent
lists (hosts of ``adult/urls``, ``mixed_adult``, ``lingerie``, ``dating``) with
two-label suffixes (``co.uk``) kept whole; registrable labels assembled from
real labels of every shipped list and from an order-2 character Markov chain
trained on them; the share and the words of subdomains, hosting parents
(``blogspot.com``-like) and IPv4 literals as in the shipped lists; and the share
of compound labels (``free-porn-videos``) set so that the mean length is the
real adult list's (its mirror size, 124,529,768 bytes for 4,599,280 lines:
26.1 characters a name). Deterministic for ``--n`` and ``--seed``; the list is
cached in ``--workdir``.

The list is installed as ``lists/ut1/adult/domains`` in a copy of the shipped
rules (``adult.yaml`` includes it, as after ``lists update``). Each phase runs in
a fresh process:

- cold compile: an empty cache, ``load_rules(isolate=True)`` as the proxy does
  (the compiler runs in a child process; its peak RSS is reported);
- warm start: the cached index mapped, RSS and objects added, full GC time,
  then ``--queries`` lookups (a third listed names, a third subdomains of them,
  a third unlisted names) through the index and through ``Engine.decide``
  (every host new to the engine, so its per-host cache never helps); every
  answer is checked. Three rounds, medians reported;
- reference: the same names in a plain ``dict`` (the engine before the index);
- E2Guardian (Debian's ``e2guardian``) with the same list as its banned site
  list: time until it listens, and its RSS minus its RSS with an empty list.

Prints a Markdown table for bench/RESULTS.md. Floors (issue 6): RSS added
<= 120 MB, warm start <= 2 s, cold compile <= 60 s, lookup p99 <= 20 us.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import json
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # after REPO: bench/proxy.py must not shadow proxy/

from common import (  # noqa: E402
    BenchError,
    Procs,
    free_port,
    machine_facts,
    raise_on_sigterm,
    self_rss_mb,  # noqa: E402
    tool_version,
    wait_port,
)
from common import rss_mb as proc_rss  # noqa: E402

UT1 = REPO / "rules" / "lists" / "ut1"
GENERATOR_VERSION = 1
ADULT_MEAN_LENGTH = 124_529_768 / 4_599_280 - 1  # bytes per line minus the newline: 26.08
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_SLD = {"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "gen", "nom"}
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _read(path: Path, url: bool = False) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip().lower()
        if line and not line.startswith("#"):
            out.append(line.split("/", 1)[0] if url else line)
    return out


def _split(name: str) -> tuple[list[str], str]:
    """(labels before the public suffix, suffix) with two-label suffixes such as co.uk kept whole."""
    labels = name.split(".")
    if len(labels) >= 3 and labels[-2] in _SLD and len(labels[-1]) == 2:
        return labels[:-2], ".".join(labels[-2:])
    return labels[:-1], labels[-1]


class _Model:
    def __init__(self) -> None:
        every: list[str] = []
        for f in sorted(UT1.glob("*/domains")):
            every.extend(_read(f))
        adultish = _read(UT1 / "adult" / "urls", url=True)
        for cat in ("mixed_adult", "lingerie", "dating"):
            adultish.extend(_read(UT1 / cat / "domains"))
        names = [n for n in every if not _IP.fullmatch(n)]
        self.ip_share = 1 - len(names) / len(every)
        self.suffixes = Counter(_split(n)[1] for n in adultish + names[::20])
        depth = Counter()
        sub_labels: Counter[str] = Counter()
        parents: Counter[str] = Counter()
        reg_labels: list[str] = []
        for n in names:
            labels, suffix = _split(n)
            if not labels:
                continue
            reg_labels.append(labels[-1])
            depth[len(labels) - 1] += 1
            for s in labels[:-1]:
                sub_labels[s] += 1
            if len(labels) > 1:
                parents[labels[-1] + "." + suffix] += 1
        self.depth = depth
        self.sub_labels = sub_labels
        self.parents = Counter({p: c for p, c in parents.items() if c >= 5})
        self.parent_share = sum(self.parents.values()) / max(1, sum(parents.values()))
        self.real_labels = sorted({lab for lab in reg_labels if _LABEL.fullmatch(lab)})
        self.piece_lengths = Counter(len(lab) for lab in self.real_labels if 3 <= len(lab) <= 12)
        # order-2 character chain over the registrable labels
        chain: dict[str, Counter[str]] = {}
        for lab in self.real_labels:
            s = "^^" + lab + "$"
            for i in range(2, len(s)):
                chain.setdefault(s[i - 2 : i], Counter())[s[i]] += 1
        self.chain = {k: _cum(v) for k, v in chain.items()}

    def markov(self, rng: random.Random, length: int) -> str:
        state, out = "^^", []
        while len(out) < length:
            table = self.chain.get(state)
            if table is None:
                break
            keys, cum = table
            c = keys[bisect.bisect(cum, rng.random() * cum[-1])]
            if c == "$":
                if len(out) >= 3:
                    break
                state = "^^"
                continue
            out.append(c)
            state = state[1] + c
        return "".join(out).strip("-") or "x"


def _cum(counter: Counter) -> tuple[list, list]:
    keys = sorted(counter)
    return keys, list(itertools.accumulate(counter[k] for k in keys))


def _sampler(counter: Counter, rng: random.Random):
    keys, cum = _cum(counter)
    total = cum[-1]

    def draw():
        return keys[bisect.bisect(cum, rng.random() * total)]

    return draw


def _namer(model: _Model, pieces: list[str], rng: random.Random, compound_share: float):
    suffix = _sampler(model.suffixes, rng)
    depth = _sampler(model.depth, rng)
    sub_label = _sampler(model.sub_labels, rng)
    parent = _sampler(model.parents, rng)

    def one() -> str:
        if rng.random() < model.ip_share:
            return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        label = rng.choice(pieces)
        for _ in range(4):  # compound labels: free-porn-videos
            if rng.random() >= compound_share:
                break
            label += rng.choice(("-", "", "")) + rng.choice(pieces)
        label = label[:63].strip("-") or "x"
        d = depth()
        if d and rng.random() < model.parent_share:
            return f"{label}.{parent()}"
        return ".".join([*(sub_label() for _ in range(d)), label, suffix()])

    return one


def generate(n: int, seed: int = 2026) -> list[str]:
    """``n`` distinct realistic domain names, in no particular order (as a list file has them)."""
    model = _Model()
    rng = random.Random(seed)
    piece_len = _sampler(model.piece_lengths, rng)
    pieces = list(model.real_labels)
    pieces.extend(model.markov(rng, piece_len()) for _ in range(len(pieces)))
    lo, hi = 0.0, 0.95  # calibrate the compound share to the adult list's mean length
    for _ in range(14):
        mid = (lo + hi) / 2
        one = _namer(model, pieces, random.Random(seed + 1), mid)
        sample = [one() for _ in range(50_000)]
        if sum(map(len, sample)) / len(sample) < ADULT_MEAN_LENGTH:
            lo = mid
        else:
            hi = mid
    one = _namer(model, pieces, rng, (lo + hi) / 2)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        name = one()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def write_list(path: Path, n: int, seed: int) -> Path:
    """The generated list (cached beside it for the same ``n`` and ``seed``)."""
    stamp = path.with_name(path.name + ".params")
    want = f"{n} {seed} {GENERATOR_VERSION}\n"
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    names = generate(n, seed)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(names) + "\n", encoding="ascii")
    tmp.replace(path)
    stamp.write_text(want)
    return path


# ----------------------------------------------------------------------------- measurements


def gc_ms() -> float:
    """Median time of a full collection (the collector walks every tracked container)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def child_cold(rules: Path, cache: Path) -> dict:
    """A stale cache: the proxy's path (compile in a child process, then map the result)."""
    from proxy.rules import load_rules

    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    rs = load_rules(rules, cache, isolate=True)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": secs, "index_mb": rs.index_bytes / 1e6, "names": len(rs.domains),
            "compiler_peak_rss_mb": peak}  # fmt: skip


def child_warm(rules: Path, cache: Path, config: Path, queries: Path) -> dict:
    """Warm start from the cache, then lookups: RSS, time, GC and latency as the proxy sees them."""
    import proxy.engine  # noqa: F401  (imports are not the index's memory)
    from proxy.config import load_config
    from proxy.engine import Engine
    from proxy.model import Request
    from proxy.rules import load_rules

    qs = [line.split("\t") for line in queries.read_text().splitlines()]
    cfg = load_config(config)
    gc0_ms = gc_ms()
    objects0, rss0 = len(gc.get_objects()), self_rss_mb()
    t0 = time.perf_counter()
    rs = load_rules(rules, cache)
    load_s = time.perf_counter() - t0
    assert rs.from_cache, "the cache was not used"
    rss1 = self_rss_mb()
    objects = len(gc.get_objects()) - objects0
    gc_full_ms = gc_ms() - gc0_ms  # what the index adds to a full collection
    t0 = time.perf_counter()
    gc.freeze()
    freeze_ms = (time.perf_counter() - t0) * 1000
    engine = Engine(cfg, rs)
    hits = rs.domains.hits
    clock = time.perf_counter_ns
    lookup = []
    for host, _kind in qs:
        t = clock()
        hits(host)
        lookup.append((clock() - t) / 1000)
    decide, wrong, wrongs = [], 0, []
    for i, (host, kind) in enumerate(qs):  # every host is new to the engine: no cache hits
        req = Request(host=host, path="/", scheme="https", client="10.1.2.3")
        t = clock()
        d = engine.decide(req)
        decide.append((clock() - t) / 1000)
        bad = (kind != "none") != (d.category == "adult" and "adult/domains:" in d.rule)
        if bad and not other_rule(rs, host, d):
            wrong += 1
            wrongs.append(f"{host} ({kind}): {d.action} {d.category} {d.rule}")
        if i == 0:
            first_rule = d.rule
    rss2 = self_rss_mb()
    return {
        "seconds": load_s, "rss_mb": rss1 - rss0, "rss_after_lookups_mb": rss2 - rss0,
        "objects": objects, "gc_full_ms": gc_full_ms, "freeze_ms": freeze_ms,
        "lookup_p50": pct(lookup, 0.5), "lookup_p99": pct(lookup, 0.99),
        "decide_p50": pct(decide, 0.5), "decide_p99": pct(decide, 0.99),
        "queries": len(qs), "wrong": wrong, "wrongs": wrongs[:5], "example_rule": first_rule,
    }  # fmt: skip


def other_rule(rs, host: str, d) -> bool:
    """A decision the generated list does not make, rightly: a shipped list also names the host
    (an allow category wins the tie, a URL entry is more specific, a longer entry elsewhere)."""
    return d.category != "adult" and d.category is not None and "/adult/domains:" not in d.rule


def child_dict(domains: Path, queries: Path) -> dict:
    """Reference: the names in a plain dict, as the engine held them before the index."""
    from proxy.lists import Garbage, read_list

    qs = [line.split("\t")[0] for line in queries.read_text().splitlines()]
    gc0_ms = gc_ms()
    objects0, rss0 = len(gc.get_objects()), self_rss_mb()
    t0 = time.perf_counter()
    table: dict[str, int] = {}
    for item in read_list(domains, "domains", "domains"):
        if not isinstance(item, Garbage):
            table.setdefault(item[1], item[0])  # type: ignore[index]
    load_s = time.perf_counter() - t0
    rss1 = self_rss_mb()
    objects = len(gc.get_objects()) - objects0
    gc_full_ms = gc_ms() - gc0_ms
    clock = time.perf_counter_ns
    lookup = []
    for host in qs:
        t = clock()
        s = host
        while True:
            if s in table:
                break
            dot = s.find(".")
            if dot < 0:
                break
            s = s[dot + 1 :]
        lookup.append((clock() - t) / 1000)
    return {"seconds": load_s, "rss_mb": rss1 - rss0, "gc_full_ms": gc_full_ms, "objects": objects,
            "lookup_p50": pct(lookup, 0.5), "lookup_p99": pct(lookup, 0.99)}  # fmt: skip


def run_child(phase: str, *args: str, timeout: float = 900) -> dict:
    p = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_child", phase, *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if p.returncode != 0:
        raise BenchError(f"{phase} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- E2Guardian


def e2guardian(workdir: Path, domains: Path | None, procs: Procs) -> dict:
    """Start Debian's e2guardian with ``domains`` as its banned site list; time to listen, RSS."""
    binary = shutil.which("e2guardian") or "/usr/sbin/e2guardian"
    if not Path(binary).exists() or not Path("/etc/e2guardian").is_dir():
        raise BenchError("e2guardian is not installed (apt-get install -y e2guardian)")
    d = workdir / ("e2g-list" if domains else "e2g-empty")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree("/etc/e2guardian", d / "etc")
    port = free_port()
    for f in (d / "etc").rglob("*"):
        if (
            f.is_file()
            and f.suffix in (".conf", ".story", "")
            and "/etc/e2guardian" in f.read_text(errors="replace")
        ):
            f.write_text(f.read_text(errors="replace").replace("/etc/e2guardian", str(d / "etc")))
    conf = d / "etc" / "e2guardian.conf"
    text = conf.read_text()
    for key, value in {
        "filterports": str(port), "filterip": "127.0.0.1", "nodaemon": "on", "httpworkers": "50",
        "transparenthttpsport": str(free_port()),
        "pidfilename": f"'{d}/e2g.pid'", "loglocation": f"'{d}/access.log'",
    }.items():  # fmt: skip
        text = re.sub(rf"(?m)^#?\s*{key}\s*=.*$", f"{key} = {value}", text, count=1)
    conf.write_text(text)
    if domains is not None:
        shutil.copy(domains, d / "banned.domains")
        with open(d / "etc" / "lists" / "bannedsitelist", "a") as fh:
            fh.write(f"\n.Include<{d}/banned.domains>\n")
    (d / "access.log").touch()
    for p in [d, *d.rglob("*")]:
        os.chmod(p, 0o777 if p.is_dir() or p.name == "access.log" else 0o644)
    os.chmod(workdir, 0o755)
    t0 = time.monotonic()
    proc = procs.start(
        [binary, "-N", "-c", str(conf)], log=d / "stderr.log", stdout=subprocess.DEVNULL
    )
    try:
        wait_port("127.0.0.1", port, 300, proc, "e2guardian")
        secs = time.monotonic() - t0
        blocked = None
        if domains is not None:
            with open(domains) as fh:  # a listed name (not an IP literal: sitelists hold names)
                probe = next(n.strip() for n in fh if n.strip() and not n[0].isdigit())
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"GET http://{probe}/ HTTP/1.0\r\nHost: {probe}\r\n\r\n".encode())
                answer = b""
                while len(answer) < 1 << 20 and (chunk := s.recv(65536)):
                    answer += chunk
            blocked = b"Denied" in answer or b"DENIED" in answer
        time.sleep(1)
        rss = proc_rss(proc.pid) or 0.0
    finally:
        procs.stop(proc)
    return {"seconds": secs, "rss_mb": rss, "blocked": blocked}


def sample_queries(names: list[str], path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    listed = set(names)
    entries = rng.sample(names, n // 3)
    subs = [f"{rng.choice(['www', 'm', 'cdn', 'img'])}.{x}" for x in rng.sample(names, n // 3)
            if not x[0].isdigit()]  # fmt: skip
    others: list[str] = []
    more = generate(n // 2, seed + 99)
    for name in more:
        if len(others) >= n // 3:
            break
        labels = name.split(".")
        if not any(".".join(labels[i:]) in listed for i in range(len(labels))):
            others.append(name)
    rows = [(h, "entry") for h in entries] + [(h, "sub") for h in subs]
    rows += [(h, "none") for h in others]
    rng.shuffle(rows)
    path.write_text("".join(f"{h}\t{k}\n" for h, k in rows))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        phase, args = sys.argv[2], [Path(a) for a in sys.argv[3:]]
        fn = {"cold": child_cold, "warm": child_warm, "dict": child_dict}[phase]
        print(json.dumps(fn(*args)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--n", type=int, default=5_000_000, help="generated domains (default 5,000,000)"
    )
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cipa-bench-lists"
    )
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--no-e2guardian", action="store_true")
    ap.add_argument("--no-reference", action="store_true", help="skip the plain-dict reference")
    args = ap.parse_args()
    raise_on_sigterm()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    generated = write_list(work / f"generated-{args.n}-{args.seed}.domains", args.n, args.seed)
    print(
        f"list: {generated} ({generated.stat().st_size / 1e6:.1f} MB, {time.monotonic() - t0:.0f}s)",
        file=sys.stderr,
    )
    names = generated.read_text().split("\n")[:-1]
    mean_len = sum(map(len, names)) / len(names)
    queries = work / "queries.tsv"
    sample_queries(names, queries, args.queries, args.seed)
    del names
    # a copy of the shipped rules with the generated list as UT1's adult/domains, which
    # rules/adult.yaml includes (include_if_present) exactly as after `lists update`
    rules = work / "rules"
    shutil.rmtree(rules, ignore_errors=True)
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns(".ut1*"))
    target = rules / "lists" / "ut1" / "adult" / "domains"
    os.link(generated, target) if os.stat(generated).st_dev == os.stat(
        rules
    ).st_dev else shutil.copy(generated, target)
    config = work / "config.yaml"
    shutil.copy(REPO / "config.yaml", config)
    cache = work / "cache"

    print("cold compile ...", file=sys.stderr)
    cold = run_child("cold", str(rules), str(cache))
    print("warm start + lookups (3 rounds) ...", file=sys.stderr)
    warms = [run_child("warm", str(rules), str(cache), str(config), str(queries)) for _ in range(3)]
    warm = dict(warms[0])
    for k in ("seconds", "rss_mb", "lookup_p50", "lookup_p99", "decide_p50", "decide_p99",
              "gc_full_ms", "freeze_ms", "objects"):  # fmt: skip
        warm[k] = statistics.median(w[k] for w in warms)
    ref = None
    if not args.no_reference:
        print("reference: plain dict ...", file=sys.stderr)
        ref = run_child("dict", str(target), str(queries))
    e2g = e2g0 = None
    if not args.no_e2guardian:
        print("E2Guardian ...", file=sys.stderr)
        procs = Procs(pin=False)
        try:
            e2g0 = e2guardian(work, None, procs)
            e2g = e2guardian(work, target, procs)
        finally:
            procs.stop_all()
    report(args, cold, warm, warms, ref, e2g, e2g0, mean_len)
    return 0


def report(args, cold, warm, warms, ref, e2g, e2g0, mean_len) -> None:
    f = machine_facts()
    print(
        f"\nmachine: {f['nproc']} cores · {f['cpu_model']} · Python {f['python']} · "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"list: {args.n:,} generated names (mean {mean_len:.1f} characters; UT1 adult: 26.1) "
        f"+ the shipped rules; index file {cold['index_mb']:.1f} MB, {cold['names']:,} names; "
        f"{warm['queries']:,} lookups (1/3 entries, 1/3 subdomains of entries, 1/3 unlisted), "
        f"{warm['wrong']} wrong answers; e.g. {warm['example_rule']}\n"
    )
    na = "—"

    def ok(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    if e2g:
        e2g_rss = f"{e2g['rss_mb'] - e2g0['rss_mb']:.0f} MB ({e2g['rss_mb']:.0f} MB − {e2g0['rss_mb']:.0f} MB with an empty list)"
        e2g_load = f"{e2g['seconds']:.1f} s to listen (empty list: {e2g0['seconds']:.1f} s)"
    else:
        e2g_load = e2g_rss = na
    version = tool_version("e2guardian", None) if e2g else ""
    rows = [
        ("resident memory added", f"{warm['rss_mb']:.0f} MB",
         f"{ref['rss_mb']:.0f} MB" if ref else na, e2g_rss, "≤ 120 MB", ok(warm["rss_mb"] <= 120)),
        ("warm start (cached index)", f"{warm['seconds']:.2f} s", na, na, "≤ 2 s",
         ok(warm["seconds"] <= 2)),
        ("cold compile / load",
         f"{cold['seconds']:.1f} s (in a child process; its peak RSS {cold['compiler_peak_rss_mb']:.0f} MB)",
         f"{ref['seconds']:.1f} s" if ref else na, e2g_load, "≤ 60 s", ok(cold["seconds"] <= 60)),
        ("lookup p50 / p99", f"{warm['lookup_p50']:.1f} / {warm['lookup_p99']:.1f} µs",
         f"{ref['lookup_p50']:.1f} / {ref['lookup_p99']:.1f} µs" if ref else na, na,
         "p99 ≤ 20 µs", ok(warm["lookup_p99"] <= 20)),
        ("Engine.decide p50 / p99 (hosts new to it)",
         f"{warm['decide_p50']:.1f} / {warm['decide_p99']:.1f} µs", na, na, "", ""),
        ("full gc.collect(): time the index adds",
         f"{warm['gc_full_ms']:.1f} ms ({warm['objects']:,.0f} objects added; gc.freeze() {warm['freeze_ms']:.1f} ms)",
         f"{ref['gc_full_ms']:.0f} ms ({ref['objects']:,} objects)" if ref else na, na, "", ""),
    ]  # fmt: skip
    print(
        f"| metric | cipa-proxy compact index | plain Python dict (before) | E2Guardian {version} | floor | verdict |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if e2g is not None:
        print(f"\nE2Guardian blocked a listed name after loading: {e2g['blocked']}")
    rounds = "; ".join(
        "{:.2f} s, {:.0f} MB, p99 {:.1f} µs".format(w["seconds"], w["rss_mb"], w["lookup_p99"])
        for w in warms
    )
    print(f"warm-start rounds: {rounds}")
    for w in warm["wrongs"]:
        print(f"wrong: {w}")


if __name__ == "__main__":
    sys.exit(main())
