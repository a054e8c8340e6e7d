"""Content scoring cost: per KB vs number of phrases, and proxy throughput with scoring on vs off.

Part 1 (in process, no network): the pages of the evaluation set
(``tests/data/content_eval``) grown to ~50 KB each, scored against the
shipped phrase lists plus N synthetic phrases (N up to 100,000). Reports
microseconds per KB for the reference pipeline (decode, strip markup,
normalize, Aho–Corasick scan), for its automaton scan alone, and for the
Hyperscan scanner of the raw page that the proxy runs (``proxy/fastscan.py``),
next to a naive matcher that looks for every phrase separately (what the cost
would be without an automaton).

Part 2 (``--proxy``, the default): nginx serves the benign pages of the set
(~50 KB each); wrk fetches them through ``cipa-proxy run`` (one worker) with
``content_threshold`` 100 (scoring on) and 0 (off), alternating runs; the
ratio of requests per second is the figure. wrk and nginx share CPU 0, the
proxy has CPU 1 (when ``taskset`` can pin).

    .venv/bin/python bench/content.py            # both parts, Markdown tables on stdout
    .venv/bin/python bench/content.py --no-proxy # part 1 only
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The repository first: bench/proxy.py must not shadow the `proxy` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    BenchError,
    Procs,
    can_pin,
    cpu_seconds,
    parse_wrk,
    start_file_origin,
    venv_tool,
)

from proxy.content import (  # noqa: E402
    Phrase,
    PhraseSet,
    load_phrases,
    page_text,
    phrase_keys,
)

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "tests" / "data" / "content_eval"
PAGE_BYTES = 50_000


def pages(
    labels: tuple[str, ...] = ("adult", "gambling", "none"), grow: str = "article"
) -> list[bytes]:
    """Evaluation pages grown to ~50 KB.

    ``article``: their <main> part (article, related links, comments) repeated: the worst
    case for scoring, every page dense with the words of its topic. ``chrome``: the article
    once, the related links and comments (neutral text) repeated: the shape of a real 50 KB
    page, one article in site furniture.
    """
    spec = importlib.util.spec_from_file_location("content_eval_generate", EVAL / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = []
    for row in module.generate():
        if row["label"] not in labels:
            continue
        doc = row["html"].encode("utf-8")
        element = b"main" if grow == "article" else b"aside"
        head, _, rest = doc.partition(b"<%s>" % element)
        part, _, tail = rest.partition(b"</%s>" % element)
        head, tail = head + b"<%s>" % element, b"</%s>" % element + tail
        body = part
        while len(head) + len(body) + len(tail) < PAGE_BYTES:
            body += part
        out.append(head + body + tail)
    return out


def synthetic(n: int, seed: int = 7) -> list[tuple[tuple[str, ...], Phrase]]:
    """``n`` made-up phrases of 1-3 pseudo-words (they rarely match: the cost is the scan)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(n):
        words = [
            "".join(rng.choice(letters) for _ in range(rng.randint(4, 9)))
            for _ in range(rng.randint(1, 3))
        ]
        text = " ".join(words)
        out.append(
            (phrase_keys(text), Phrase(text, "adult", rng.randint(-50, 80), f"synthetic:{i}"))
        )
    return out


def with_extra(base: PhraseSet, extra: int) -> PhraseSet:
    """The shipped phrases plus ``extra`` synthetic ones, compiled into one automaton."""
    shipped = load_phrases(REPO / "rules" / "phrases")
    items = []
    for entries in shipped._entries:  # noqa: SLF001 - the bench rebuilds the same set
        for p in entries:
            items.append((phrase_keys(p.text + ("*" if _is_prefix(shipped, p) else "")), p))
    return PhraseSet(items + synthetic(extra), [], shipped.files)


def _is_prefix(ps: PhraseSet, p: Phrase) -> bool:
    keys = phrase_keys(p.text)
    return bool(keys) and keys[0] not in ps._keys  # noqa: SLF001 - stored without the closing space


def _timeit(fn, data: list, repeat: int = 3) -> float:
    """Best-of-``repeat`` seconds for one pass of ``fn`` over ``data``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for x in data:
            fn(x)
        best = min(best, time.perf_counter() - t)
    return best


def naive_matcher(phrases: list[str]):
    """One substring search per phrase (what a phrase list costs without an automaton)."""
    keys = [k for p in phrases for k in phrase_keys(p)[:1]]

    def match(text: str) -> int:
        return sum(1 for k in keys if k in text)

    return match


def part1(counts: list[int], naive_up_to: int) -> list[str]:
    docs = pages()
    kb = sum(map(len, docs)) / 1024
    base = load_phrases(REPO / "rules" / "phrases")
    texts = [page_text(d, "text/html") for d in docs]
    extract = _timeit(lambda d: page_text(d, "text/html"), docs)
    lines = [
        f"{len(docs)} pages, {kb / len(docs):.1f} KB each on average "
        f"({sum(map(len, texts)) / 1024 / kb:.0%} of the bytes are visible text); "
        f"reference text extraction (decode + strip + normalize): {extract * 1e6 / kb:.1f} µs/KB",
        "",
        "| phrases | build s | Aho–Corasick scan of the text µs/KB | reference pipeline µs/KB "
        "| Hyperscan, full score µs/KB | Hyperscan, threshold 100 (what the proxy runs) µs/KB "
        "| µs per 50 KB page | MB/s | naive search µs/KB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for extra in counts:
        t = time.perf_counter()
        ps = with_extra(base, extra) if extra else base
        build = time.perf_counter() - t
        scan = _timeit(ps.score_normalized, texts)
        reference = extract + scan
        full = _timeit(lambda d, ps=ps: ps.score_body(d, "text/html"), docs)
        fast = _timeit(lambda d, ps=ps: ps.score_body(d, "text/html", threshold=100), docs)
        naive = "–"
        if base.count + extra <= naive_up_to:
            words = [p.text for entries in ps._entries for p in entries]  # noqa: SLF001
            m = naive_matcher(words)
            naive = f"{_timeit(m, texts, 1) * 1e6 / kb:.1f}"
        lines.append(
            f"| {ps.count:,} | {build:.1f} | {scan * 1e6 / kb:.1f} | {reference * 1e6 / kb:.1f} "
            f"| {full * 1e6 / kb:.1f} | {fast * 1e6 / kb:.1f} | {fast * 1e6 / len(docs):.0f} "
            f"| {kb / 1024 / fast:.0f} "
            f"| {naive} |"
        )
    return lines


# ----------------------------------------------------------------------------- part 2

LUA = """
local n = {n}
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("GET", "http://localhost:{port}/p" .. i .. ".html",
                    {{["Host"] = "localhost:{port}", ["Accept"] = "text/html"}})
end
"""


def start_proxy(
    procs: Procs, tmp: Path, threshold: int, cpu: int | None, tag: str
) -> tuple[subprocess.Popen, int]:
    cmd = [
        venv_tool("cipa-proxy"), "run", "--config", str(REPO / "config.yaml"),
        "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--set", "metrics.listen=127.0.0.1:0", "--set", f"audit.path={tmp / ('audit-' + tag)}",
        "--set", f"tls.confdir={tmp / 'ca'}", "--set", "workers=1",
        "--set", f"policies.students.content_threshold={threshold}",
    ]  # fmt: skip
    proc = procs.start(cmd, cpu, tmp / f"cipa-{tag}.log", stdout=subprocess.PIPE, text=True)
    port: list[int] = []
    ready = threading.Event()

    def reader() -> None:
        rules = False
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("cipa-proxy listening at "):
                port.append(int(line.rsplit(":", 1)[1]))
            rules = rules or line.startswith("cipa-proxy rules loaded")
            if port and rules:
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(120) or not port:
        raise BenchError(f"cipa-proxy did not start (see {tmp / f'cipa-{tag}.log'})")
    return proc, port[0]


def part2(seconds: float, rounds: int, connections: int, grow: str = "article") -> list[str]:
    wrk = shutil.which("wrk")
    if not wrk or not shutil.which("nginx"):
        raise BenchError("part 2 needs wrk and nginx (apt-get install -y wrk nginx-light)")
    docs = pages(("none",), grow)
    pin = can_pin(0, 1)
    procs = Procs(pin=pin)
    tmp = Path(tempfile.mkdtemp(prefix="cipa-bench-content-"))
    try:
        tmp.chmod(0o755)  # nginx's worker (nobody) reads the pages
        (tmp / "www").mkdir(mode=0o755)
        for i, d in enumerate(docs, 1):
            (tmp / "www" / f"p{i}.html").write_bytes(d)
        _, port = start_file_origin(procs, tmp, tmp / "www", 0 if pin else None)
        (tmp / "load.lua").write_text(LUA.format(n=len(docs), port=port))
        results: dict[str, list[dict]] = {"on": [], "off": []}
        for rnd in range(rounds):
            for mode in ("on", "off") if rnd % 2 == 0 else ("off", "on"):
                proc, pport = start_proxy(
                    procs, tmp, 100 if mode == "on" else 0, 1 if pin else None, f"{mode}{rnd}"
                )
                base = [
                    wrk,
                    "-t",
                    "1",
                    "-c",
                    str(connections),
                    "--latency",
                    "--timeout",
                    "10s",
                    "-s",
                    str(tmp / "load.lua"),
                ]
                target = f"http://127.0.0.1:{pport}/"
                probe = subprocess.run(
                    ["curl", "-s", "-o", str(tmp / "probe.html"), "-w", "%{http_code}", "-x", target,
                     "-H", "Accept: text/html", f"http://localhost:{port}/p1.html"],
                    capture_output=True, text=True,
                )  # fmt: skip
                if probe.stdout != "200":
                    body = (tmp / "probe.html").read_text(errors="replace")[:600]
                    raise BenchError(f"scoring {mode}: probe answered {probe.stdout}: {body}")
                subprocess.run(
                    [*base, "-d", "2s", target], capture_output=True, check=True
                )  # warm-up
                cmd = [*base, "-d", f"{max(1, round(seconds))}s", target]
                if pin:
                    cmd = ["taskset", "-c", "0", *cmd]
                cpu0 = cpu_seconds(proc.pid)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                cpu = cpu_seconds(proc.pid) - cpu0
                res = parse_wrk(out)
                if res["bad_status"] or res["socket_errors"]:
                    raise BenchError(f"scoring {mode}: errors in the run:\n{out}")
                res["rps"] = res["good"] / res["seconds"]
                res["cpu_ms"] = cpu * 1000 / max(1, res["requests"])
                results[mode].append(res)
                procs.stop(proc)
        on = statistics.median(r["rps"] for r in results["on"])
        off = statistics.median(r["rps"] for r in results["off"])
        p50 = {m: statistics.median(r["p50"] for r in results[m]) * 1000 for m in results}
        p99 = {m: statistics.median(r["p99"] for r in results[m]) * 1000 for m in results}
        cpu = {m: statistics.median(r["cpu_ms"] for r in results[m]) for m in results}
        kb = sum(map(len, docs)) / len(docs) / 1024
        return [
            f"{len(docs)} benign pages of {kb:.0f} KB, wrk -c {connections}, {seconds:.0f} s x {rounds} runs "
            f"per mode (median), proxy {'pinned to CPU 1' if pin else 'not pinned'}:",
            "",
            "| content scoring | requests/s | MB/s | p50 ms | p99 ms | proxy CPU ms/request |",
            "|---|---:|---:|---:|---:|---:|",
            f"| off (content_threshold 0) | {off:.0f} | {off * kb / 1024:.1f} | {p50['off']:.1f} | {p99['off']:.1f} | {cpu['off']:.2f} |",
            f"| on (content_threshold 100) | {on:.0f} | {on * kb / 1024:.1f} | {p50['on']:.1f} | {p99['on']:.1f} | {cpu['on']:.2f} |",
            "",
            f"throughput ratio on/off: **{on / off:.2f}**; by proxy CPU per request: "
            f"**{cpu['off'] / cpu['on']:.2f}** (the steadier figure on a shared machine)",
        ]
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--phrases",
        default="0,1000,10000",
        help="extra synthetic phrases per row (100000 works: the build takes ~4 minutes)",
    )
    ap.add_argument(
        "--naive-up-to", type=int, default=11000, help="largest set the naive matcher runs on"
    )
    ap.add_argument("--no-proxy", action="store_true", help="skip part 2 (needs nginx and wrk)")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument(
        "--grow",
        default="article,chrome",
        help="how pages reach 50 KB in part 2: article (worst case), chrome (real shape), or both",
    )
    args = ap.parse_args()
    print("## Content scoring cost vs number of phrases\n")
    print("\n".join(part1([int(x) for x in args.phrases.split(",")], args.naive_up_to)))
    if not args.no_proxy:
        for grow in args.grow.split(","):
            print(f"\n## Proxy throughput, 50 KB pages grown by {grow}, scoring on vs off\n")
            try:
                print("\n".join(part2(args.seconds, args.rounds, args.connections, grow)))
            except BenchError as exc:
                print(f"part 2 not run: {exc}")
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
