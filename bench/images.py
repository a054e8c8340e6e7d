"""Image classification (issue 13): the classifier, and what it costs the proxy.

    .venv/bin/python bench/images.py [--rounds 3] [--duration 8] [--connections 8]
                                     [--images 40] [--block-images 60] [--quick] [--json [PATH]] [--check]

1. **Classifier** (``proxy.images.ClassifierPool``, 1 worker process, as the proxy
   runs it): distinct 640x480 JPEG "photos" of objects drawn with Pillow.
   One at a time: latency from submit to verdict (IPC included) and the worker's
   own time per image, p50/p99. All at once (the queue holds them all): images
   per second per worker.
2. **Proxy throughput, page mix with 30% image requests** (1 KB pages, ~30 KB
   JPEGs, 400 distinct images): nginx origin, ``wrk`` through ``cipa-proxy run``
   with the students' ``images.mode`` ``off`` vs ``learn``, alternating rounds,
   medians. Floor: learn/off requests/s >= 0.9. The classifier runs on the same
   core budget as the proxy (its processes inherit the proxy's CPU pinning; they
   run at nice 10, so the proxy comes first).
3. **Block mode added latency**: one client fetches distinct images one at a time
   through a ``block`` proxy and an ``off`` proxy (same image, alternately);
   added latency = block - off, per image, p50/p99. Floor: p99 <= images.max_wait_ms
   (a held image waits at most that long for its verdict, then passes).

Pinning (when ``taskset`` can): proxies on CPU 1, nginx and wrk on CPU 0.
Exit status: 0; 1 with ``--check`` when a floor fails; 2 when the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    BenchError,
    Procs,
    can_pin,
    machine_facts,
    median,
    parse_wrk,
    raise_on_sigterm,
    start_file_origin,
    venv_tool,
)

# bench/proxy.py would shadow the `proxy` package (here and in the classifier processes,
# which import this file again as their __main__): take this directory off the path.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _HERE]
sys.modules.pop("proxy", None)
sys.path.insert(0, str(REPO))

from proxy.images import ClassifierPool  # noqa: E402

FLOOR_RATIO = 0.9  # learn/off requests/s on the page mix: at least
IMAGE_SHARE = 3  # of every 10 requests
MAX_WAIT_MS = 250  # images.max_wait_ms (the default)


# ---------------------------------------------------------------------------- pictures


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A JPEG "photo" of simple objects on a textured background (never anything explicit)."""
    from PIL import Image, ImageDraw, ImageFilter

    rnd = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size, tuple(rnd.randint(60, 200) for _ in range(3)))
    d = ImageDraw.Draw(im)
    d.rectangle((0, h * 2 // 3, w, h), fill=tuple(rnd.randint(40, 160) for _ in range(3)))
    for _ in range(rnd.randint(4, 9)):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r = rnd.randint(20, 120)
        color = tuple(rnd.randint(0, 255) for _ in range(3))
        shape = rnd.choice(("ellipse", "rectangle", "polygon"))
        if shape == "polygon":
            d.polygon(
                [(x + rnd.randint(-r, r), y + rnd.randint(-r, r)) for _ in range(5)], fill=color
            )
        else:
            getattr(d, shape)((x - r, y - r // 2, x + r, y + r // 2), fill=color)
    im = im.filter(ImageFilter.GaussianBlur(1.2))
    noise = Image.effect_noise(size, 24).convert("RGB")
    im = Image.blend(im, noise, 0.12)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=80)
    return out.getvalue()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


# ---------------------------------------------------------------------------- 1. classifier


def bench_classifier(n: int) -> dict:
    pics = [photo(10_000 + i) for i in range(2 * n)]

    async def run() -> dict:
        pool = ClassifierPool(1, 4 * n)
        t0 = time.perf_counter()
        await asyncio.to_thread(pool.start)
        start_s = time.perf_counter() - t0
        try:
            lat, work = [], []
            for data in pics[:n]:  # one at a time
                t = time.perf_counter()
                v = await pool.submit(hashlib.sha256(data).hexdigest(), data)
                lat.append(time.perf_counter() - t)
                work.append(v.seconds)
            batch = pics[n:]
            t = time.perf_counter()
            futs = [pool.submit(hashlib.sha256(d).hexdigest(), d) for d in batch]
            verdicts = await asyncio.gather(*futs)
            elapsed = time.perf_counter() - t
        finally:
            await asyncio.to_thread(pool.stop)
        return {
            "start_s": start_s,
            "latency_p50_ms": pct(lat, 50) * 1000,
            "latency_p99_ms": pct(lat, 99) * 1000,
            "work_p50_ms": pct(work, 50) * 1000,
            "work_p99_ms": pct(work, 99) * 1000,
            "images_per_s": len(batch) / elapsed,
            "max_score": max(v.score for v in verdicts),
            "jpeg_kb": statistics.mean(len(p) for p in pics) / 1024,
        }

    return asyncio.run(run())


# ---------------------------------------------------------------------------- origin and proxies


@dataclass
class Site:
    port: int
    images: int
    pages: int = 50


def start_origin(procs: Procs, work: Path, cpu: int | None, images: int) -> Site:
    root = work / "site"
    (root / "img").mkdir(parents=True)
    (root / "page").mkdir()
    for i in range(images):
        (root / "img" / f"{i}.jpg").write_bytes(photo(i, (480, 360)))
    for i in range(50):
        body = f"<!doctype html><title>page {i}</title><p>{'lesson text ' * 80}</p>\n"
        (root / "page" / f"{i}.html").write_text(body[:1024])
    for p in (work.parent, work, root, root / "img", root / "page"):  # nginx's worker user reads
        os.chmod(p, 0o755)
    _, port = start_file_origin(procs, work, root, cpu)
    return Site(port, images)


@dataclass
class Proxy:
    mode: str
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def start_proxy(procs: Procs, work: Path, cpu: int | None, mode: str, tag: str) -> Proxy:
    rules = work / f"rules-{tag}"
    if not rules.exists():
        shutil.copytree(REPO / "rules", rules)  # learning never writes into the repository
    cmd = [
        venv_tool("cipa-proxy"), "run", "--config", str(REPO / "config.yaml"),
        "--listen-host", "127.0.0.1", "--listen-port", "0",
        "--set", "metrics.listen=127.0.0.1:0", "--set", f"audit.path={work / f'audit-{tag}'}",
        "--set", f"tls.confdir={work / 'ca'}", "--set", f"rules_dir={rules}", "--set", "workers=1",
        "--set", f"policies.students.images.mode={mode}",
        "--set", f"images.max_wait_ms={MAX_WAIT_MS}",
    ]  # fmt: skip
    # The classifier processes are the proxy's children: same pinning, same process group.
    proc = procs.start(cmd, cpu, None, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p = Proxy(mode, proc)
    ready = threading.Event()
    want_classifier = mode != "off"

    def reader() -> None:
        seen = set()
        for line in proc.stdout:  # type: ignore[union-attr]
            p.lines.append(line.rstrip("\n"))
            if m := re.match(r"cipa-proxy listening at [^ ]+:(\d+)", line):
                p.port = int(m.group(1))
                seen.add("listen")
            elif m := re.match(r"cipa-proxy metrics at [^ ]+:(\d+)", line):
                p.metrics_port = int(m.group(1))
            elif line.startswith("cipa-proxy rules loaded"):
                seen.add("rules")
            elif "image classifier ready" in line:
                seen.add("classifier")
            if {"listen", "rules"} <= seen and ("classifier" in seen or not want_classifier):
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(180) or proc.poll() is not None or not p.port:
        raise BenchError(f"cipa-proxy ({mode}) did not start:\n" + "\n".join(p.lines[-30:]))
    return p


def stop_proxy(procs: Procs, p: Proxy) -> None:
    procs.stop(p.proc)


# ---------------------------------------------------------------------------- 2. throughput

LUA = """\
local n = 0
request = function()
  n = n + 1
  local path
  if n % 10 < {share} then
    path = "/img/" .. ((n * 7919) % {images}) .. ".jpg"
  else
    path = "/page/" .. (n % {pages}) .. ".html"
  end
  return wrk.format("GET", "http://localhost:{port}" .. path, {{["Host"] = "localhost:{port}"}})
end
"""


def wrk_round(procs: Procs, p: Proxy, lua: Path, seconds: int, conns: int, cpu: int | None) -> dict:
    wrk = shutil.which("wrk")
    if not wrk:
        raise BenchError("wrk not installed (apt-get install -y wrk)")
    cmd = [wrk, "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency", "--timeout", "10s",
           "-s", str(lua), f"http://127.0.0.1:{p.port}"]  # fmt: skip
    classified = p.metric("cipa_images_classified_total")
    rc, out, err = procs.run(cmd, cpu if cpu is not None and can_pin(cpu) else None, seconds + 60)
    if rc != 0:
        raise BenchError(f"wrk failed: {err or out}")
    res = parse_wrk(out)
    if res["bad_status"] or not res["good"]:
        raise BenchError(f"{res['bad_status']} of {res['requests']} requests failed:\n{out}")
    res["rps"] = res["good"] / res["seconds"]
    res["classified"] = p.metric("cipa_images_classified_total") - classified
    return res


# ---------------------------------------------------------------------------- 3. block latency


def fetch(conn: http.client.HTTPConnection, port: int, path: str) -> tuple[float, int, bytes]:
    t = time.perf_counter()
    conn.request("GET", f"http://localhost:{port}{path}", headers={"Host": f"localhost:{port}"})
    r = conn.getresponse()
    body = r.read()
    return time.perf_counter() - t, r.status, body


def bench_block(block: Proxy, off: Proxy, site: Site, first: int, count: int) -> dict:
    cb = http.client.HTTPConnection("127.0.0.1", block.port, timeout=30)
    co = http.client.HTTPConnection("127.0.0.1", off.port, timeout=30)
    added, held = [], []
    timeouts0 = block.metric("cipa_images_skipped_total", reason="timeout")
    busy0 = block.metric("cipa_images_skipped_total", reason="queue_full")
    try:
        for i in range(first, first + count):
            path = f"/img/{i}.jpg"
            t_off, s1, b1 = fetch(co, site.port, path)
            t_block, s2, b2 = fetch(cb, site.port, path)
            if s1 != 200 or s2 != 200 or b1 != b2:
                raise BenchError(f"{path}: off {s1} / block {s2}, bodies equal: {b1 == b2}")
            added.append(t_block - t_off)
            held.append(t_block)
            time.sleep(0.05)  # a page's images arrive over time, not as a flood
    finally:
        cb.close()
        co.close()
    return {
        "images": count,
        "added_p50_ms": pct(added, 50) * 1000,
        "added_p99_ms": pct(added, 99) * 1000,
        "added_max_ms": max(added) * 1000,
        "block_p50_ms": pct(held, 50) * 1000,
        "timeouts": block.metric("cipa_images_skipped_total", reason="timeout") - timeouts0,
        "queue_full": block.metric("cipa_images_skipped_total", reason="queue_full") - busy0,
    }


# ---------------------------------------------------------------------------- report


def table(r: dict) -> str:
    c, t, b = r["classifier"], r["throughput"], r["block"]
    ratio = t["ratio"]
    rows = [
        ("classifier: images/s per worker (queue full, 640x480 JPEG)", f"{c['images_per_s']:.1f}", "", ""),
        ("classifier: latency one at a time, p50 / p99 (submit to verdict)",
         f"{c['latency_p50_ms']:.0f} / {c['latency_p99_ms']:.0f} ms", "", ""),
        ("classifier: worker time per image, p50 / p99 (decode + model)",
         f"{c['work_p50_ms']:.0f} / {c['work_p99_ms']:.0f} ms", "", ""),
        ("classifier: start (spawn + model load)", f"{c['start_s']:.1f} s", "", ""),
        ("proxy, 30% images, `off`: requests/s (median)", f"{t['off_rps']:.0f}", "", ""),
        ("proxy, 30% images, `learn`: requests/s (median)", f"{t['learn_rps']:.0f}", "", ""),
        ("learn / off", f"{ratio:.2f}", f">= {FLOOR_RATIO}", "PASS" if ratio >= FLOOR_RATIO else "FAIL"),
        ("learn: images classified per round (median; the rest skipped as queue_full)",
         f"{t['learn_classified']:.0f} of ~{t['learn_images']:.0f}", "", ""),
        ("`block` added latency per image, p50 / p99",
         f"{b['added_p50_ms']:.0f} / {b['added_p99_ms']:.0f} ms", f"p99 <= {MAX_WAIT_MS} ms",
         "PASS" if b["added_p99_ms"] <= MAX_WAIT_MS else "FAIL"),
        ("`block`: images passed unverified (timeout / queue full)",
         f"{b['timeouts']:.0f} / {b['queue_full']:.0f} of {b['images']}", "", ""),
    ]  # fmt: skip
    out = ["| measurement | value | floor | result |", "|---|---:|---|---|"]
    out += [f"| {a} | {v} | {f} | {s} |" for a, v, f, s in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk round")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--images", type=int, default=40, help="classifier benchmark: images per pass")
    ap.add_argument("--block-images", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s, 10 + 20 images")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH")
    ap.add_argument("--check", action="store_true", help="exit 1 when a floor fails")
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--proxy-cpu", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.images, args.block_images = 1, 3, 10, 20
    raise_on_sigterm()
    pin = can_pin(args.load_cpu, args.proxy_cpu)
    load_cpu, proxy_cpu = (args.load_cpu, args.proxy_cpu) if pin else (None, None)
    procs = Procs(pin=pin)
    work = Path(tempfile.mkdtemp(prefix="cipa-bench-images-"))
    result: dict = {"machine": machine_facts(), "pinned": pin, "args": vars(args)}
    try:
        print(
            f"classifier: {args.images} images one at a time, then {args.images} at once ...",
            flush=True,
        )
        result["classifier"] = bench_classifier(args.images)

        site_images = 400
        site = start_origin(procs, work / "origin", load_cpu, site_images + args.block_images)
        lua = work / "mix.lua"
        lua.write_text(LUA.format(share=IMAGE_SHARE, images=site_images, pages=50, port=site.port))
        rounds: dict[str, list[dict]] = {"off": [], "learn": []}
        for r in range(args.rounds):
            for mode in ("off", "learn") if r % 2 == 0 else ("learn", "off"):
                print(f"round {r + 1}/{args.rounds}: {mode} ...", flush=True)
                p = start_proxy(procs, work, proxy_cpu, mode, f"{mode}{r}")
                try:
                    wrk_round(procs, p, lua, 2, args.connections, load_cpu)  # warm-up
                    rounds[mode].append(
                        wrk_round(procs, p, lua, args.duration, args.connections, load_cpu)
                    )
                finally:
                    stop_proxy(procs, p)
        off = median([x["rps"] for x in rounds["off"]])
        learn = median([x["rps"] for x in rounds["learn"]])
        learn_images = median([x["good"] * IMAGE_SHARE / 10 for x in rounds["learn"]])
        result["throughput"] = {
            "off_rps": off, "learn_rps": learn, "ratio": learn / off,
            "learn_classified": median([x["classified"] for x in rounds["learn"]]),
            "learn_images": learn_images, "rounds": rounds,
        }  # fmt: skip

        print(f"block mode: {args.block_images} images, block vs off ...", flush=True)
        pb = start_proxy(procs, work, proxy_cpu, "block", "block")
        po = start_proxy(procs, work, proxy_cpu, "off", "offb")
        try:
            result["block"] = bench_block(pb, po, site, site_images, args.block_images)
        finally:
            stop_proxy(procs, pb)
            stop_proxy(procs, po)
    except BenchError as exc:
        print(f"bench/images.py: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    f = result["machine"]
    print(
        f"{f['nproc']} CPUs ({f['cpu_model']}), Python {f['python']}, pinned: {pin}; "
        f"{args.rounds} round(s) x {args.duration} s, {args.connections} connections"
    )
    print()
    print(table(result))
    if args.json:
        text = json.dumps(result, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    ok = (
        result["throughput"]["ratio"] >= FLOOR_RATIO
        and result["block"]["added_p99_ms"] <= MAX_WAIT_MS
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
