"""Images in plain HTTP and decrypted HTTPS: classify them, learn the sites, replace explicit ones.

The policy of the request's group picks ``images.mode``:

- ``monitor``: classify in the background; the score goes into the audit trail.
- ``learn``: the same, and a site that serves ``images.learn_min_hits`` different
  explicit images within ``images.learn_window`` is added to ``learned_adult``
  (``proxy/learned.py``), which the hot reload applies.
- ``block``: learn, and hold each image up to ``images.max_wait_ms`` for its
  verdict; an explicit one is replaced by a neutral placeholder of the same
  type and size. Busy or late classifier: ``images.on_timeout`` (pass, counted).
  A verdict that could not be reached for another reason (an image the decoder
  rejects, a crashed worker) fails closed: placeholder.

Which responses: GET, status 200, ``Content-Type`` image/jpeg|png|webp|gif,
body between ``min_bytes`` and ``max_bytes``, on a request the filter allowed
that is not from one of the policy's ``allow`` categories (nor lifted by an
adult override). A body of known length is buffered (``cipa_buffer``: the
recorder does not stream it) and looked at in ``response``; a body of unknown
length (chunked, or HTTP/2 without ``content-length``) is buffered up to
``max_bytes`` in block mode (past that it streams on unchecked: the bounded
buffering of ``addons/content.py``), and in learn/monitor mode copied as it
streams past, never held, and classified in the background.

Nothing slow runs on the event loop: the model runs in the pool's processes
(``proxy/images.py``), large hashes and placeholder drawing in threads, and a
held image waits on a future with a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import replace

from mitmproxy import http

from proxy import images as im
from proxy.canonical import Malformed, canonical_host, is_ip_literal
from proxy.learned import LearnedStore
from proxy.model import BLOCK, Decision

from .record import Recorder, flow_client
from .runtime import Runtime

log = logging.getLogger("cipa.images")

HASH_INLINE = 256 * 1024  # larger bodies are hashed in a thread
RETRY_START = 60.0  # seconds between attempts to start a pool that failed to start


class _Tap:
    """A ``response.stream`` callable: passes every chunk on unchanged, keeps a copy up to a cap."""

    def __init__(self, addon: ImageScan, job: im.Job, cap: int):
        self.addon, self.job, self.cap = addon, job, cap
        self.buf: bytearray | None = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        buf = self.buf
        if buf is not None:
            if chunk:
                if len(buf) + len(chunk) > self.cap:
                    self.buf = None
                    self.addon.skip("too_large")
                else:
                    buf += chunk
            else:  # end of the body
                self.buf = None
                self.addon.tapped(self.job, bytes(buf))
        return chunk


class ImageScan:
    def __init__(self, rt: Runtime, recorder: Recorder):
        self.rt = rt
        self.rec = recorder
        cfg = rt.config.images
        self.cache = im.VerdictCache(cfg.cache_entries)
        self.learner = im.Learner(cfg.learn_min_hits, cfg.learn_window)
        self.pool: im.ClassifierPool | None = None
        self._starting: asyncio.Task | None = None
        self._last_start = 0.0
        self._engine_seen: object | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def wanted(self) -> bool:
        return any(p.images_mode != "off" for p in self.rt.config.policies.values())

    async def start(self) -> None:
        """Start the classifier pool if any policy classifies images (called by master._serve)."""
        if self.wanted():
            await self._start_pool()

    async def _start_pool(self) -> None:
        cfg = self.rt.config.images
        self._last_start = time.monotonic()
        pool = im.ClassifierPool(
            cfg.workers,
            cfg.queue,
            priority=cfg.priority,
            on_result=self._classified,
            on_depth=self._depth,
        )
        self.pool = pool
        began = time.perf_counter()
        try:
            await asyncio.to_thread(pool.start)
        except Exception as exc:
            log.error(
                "image classifier did not start (%s): images are not classified; "
                "block mode applies images.on_timeout", exc,
            )  # fmt: skip
            return
        if self._stopped:
            await asyncio.to_thread(pool.stop)
            return
        log.info(
            "image classifier ready: %d worker(s), queue %d, in %.1fs",
            pool.workers, cfg.queue, time.perf_counter() - began,
        )  # fmt: skip

    def _ensure_pool(self) -> None:
        """A reload turned images on, or the last start failed a while ago: (re)start the pool."""
        if self._stopped or (self._starting is not None and not self._starting.done()):
            return
        pool = self.pool
        if pool is not None and (pool.ready or pool.failed is None):
            return
        if pool is not None and time.monotonic() - self._last_start < RETRY_START:
            return
        self._starting = self._spawn(self._start_pool())

    async def stop(self) -> None:
        self._stopped = True
        for t in list(self._tasks):
            t.cancel()
        if self._starting is not None:
            self._starting.cancel()
        pool, self.pool = self.pool, None
        if pool is not None:
            await asyncio.to_thread(pool.stop)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ metrics helpers

    def skip(self, reason: str) -> None:
        self.rt.metrics.images_skipped.labels(reason=reason).inc()

    def _depth(self, n: int) -> None:
        self.rt.metrics.images_queue_depth.set(n)

    def _classified(self, sha: str, v: im.Verdict) -> None:
        """Once per image the pool classified: cache, count, time."""
        m = self.rt.metrics
        m.images_classified.labels(verdict=v.label(self.rt.config.images.threshold)).inc()
        if v.score is not None:
            m.image_classify_seconds.observe(v.seconds)
            self.cache.put(sha, v)
        elif not (v.error or "").startswith(im.CRASHED):
            self.cache.put(sha, v)  # an unreadable image stays unreadable; a crash may not repeat

    def _learned_gauge(self) -> None:
        engine = self.rt.engine
        if engine is self._engine_seen or engine is None:
            return
        self._engine_seen = engine
        info = engine.rules.categories.get(im.LEARNED_CATEGORY)
        self.rt.metrics.learned_domains.set(info.entries if info else 0)
        cfg = self.rt.config.images
        self.learner.configure(cfg.learn_min_hits, cfg.learn_window)
        if self.cache.size != cfg.cache_entries:
            self.cache.resize(cfg.cache_entries)

    # ------------------------------------------------------------------ hooks

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._learned_gauge()  # one identity check: follows hot reloads
            self._plan(flow)
        except Exception:
            self.skip("error")
            self.rt.metrics.filter_errors.inc()
            if self._mode(flow) == "block":  # fail closed where we decide: placeholder
                log.exception("image check failed for %s; replacing the image", flow.request.url)
                flow.metadata["cipa_buffer"] = True
                flow.metadata["cipa_image_failed"] = True
            else:
                log.exception("image check failed for %s; it passes", flow.request.url)

    def _mode(self, flow: http.HTTPFlow) -> str:
        try:
            d = flow.metadata.get("cipa_decision")
            policy = self.rt.config.policies.get(d.policy) if d is not None else None
            return policy.images_mode if policy is not None else "off"
        except Exception:
            return "off"

    def _plan(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or flow.request.method != "GET" or resp.status_code != 200:
            return
        kind = im.image_kind(resp.headers.get("content-type"))
        if kind is None:
            return
        d: Decision | None = flow.metadata.get("cipa_decision")
        if d is None or d.blocked:
            return
        cfg = self.rt.config
        policy = cfg.policies.get(d.policy)
        mode = policy.images_mode if policy is not None else "off"
        if mode == "off" or policy is None:
            return
        if self.rt.fault_host is not None and flow.request.pretty_host == self.rt.fault_host:
            raise RuntimeError("injected fault (CIPA_INJECT_FAULT)")
        if d.category is not None and d.category in policy.allow:
            return self.skip("allowed_category")
        if flow.metadata.get("cipa_override"):
            return self.skip("override")
        ic = cfg.images
        r = flow.request
        job = im.Job(
            rid=flow.metadata.get("cipa_id") or "",
            mode=mode,
            kind=kind,
            host=r.pretty_host,
            url=d.url or r.pretty_url,
            client=flow_client(flow),
            user=flow.metadata.get("cipa_user"),
            group=d.group,
            policy=d.policy,
        )
        self._ensure_pool()
        length = resp.headers.get("content-length", "")
        if length.isdigit():
            n = int(length)
            if n < ic.min_bytes:
                return self.skip("too_small")
            if n > ic.max_bytes:
                return self.skip("too_large")
            flow.metadata["cipa_image_job"] = job
            flow.metadata["cipa_buffer"] = True  # the recorder must not stream it: we need the body
            return
        if mode == "block":
            # Unknown length (chunked, or HTTP/2 without content-length): block mode holds every
            # image, so the body is buffered up to max_bytes; past that it streams on unchecked
            # (addons/content.py's bounded buffering: cipa_buffer_cap).
            flow.metadata["cipa_image_job"] = job
            flow.metadata["cipa_buffer"] = True
            flow.metadata["cipa_buffer_cap"] = ic.max_bytes
            return
        if resp.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            return self.skip("not_image")  # compressed and chunked: not worth decoding on the loop
        job.tapped = True
        resp.stream = _Tap(self, job, ic.max_bytes)  # learn / monitor: copied as it streams past

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop("cipa_image_failed", None) and flow.response is not None:
            kind = im.image_kind(flow.response.headers.get("content-type")) or "png"
            job = im.Job(
                flow.metadata.get("cipa_id") or "", "block", kind, "", "", "", None, "", ""
            )
            return await self._replace(flow, job, None, "image_unverified", "image check failed")
        job: im.Job | None = flow.metadata.pop("cipa_image_job", None)
        if job is None or job.tapped or flow.response is None:
            return
        if flow.response.stream:  # buffered with a cap, and the body went past it
            return self.skip("too_large")
        try:
            await self._examine(flow, job)
        except Exception:
            log.exception("image check failed for request %s", job.rid)
            self.rt.metrics.filter_errors.inc()
            if job.mode == "block":  # fail closed where we decide
                await self._replace(flow, job, None, "image_unverified", "image check failed")

    # ------------------------------------------------------------------ buffered images

    async def _examine(self, flow: http.HTTPFlow, job: im.Job) -> None:
        loop = asyncio.get_running_loop()
        ic = self.rt.config.images
        deadline = loop.time() + ic.max_wait_ms / 1000
        resp = flow.response
        assert resp is not None
        try:
            data = resp.get_content(strict=True) or b""
        except ValueError:
            return self.skip("not_image")  # a content-encoding the browser cannot decode either
        if len(data) < ic.min_bytes:
            return self.skip("too_small")
        if len(data) > ic.max_bytes:
            return self.skip("too_large")
        if im.sniff(data) is None:
            return self.skip("not_image")  # an error page or SVG labelled as an image
        sha = await self._sha(data)
        info = flow.metadata["cipa_image"] = {"image_sha256": sha}
        v = self.cache.get(sha)
        if v is not None:
            self.rt.metrics.image_cache_hits.inc()
            return await self._decided(flow, job, sha, v, info)
        pool = self.pool
        fut = pool.submit(sha, data) if pool is not None else None
        if fut is None:
            reason = "queue_full" if pool is not None and pool.ready else "unavailable"
            self.skip(reason)
            if job.mode == "block":
                await self._unverified(flow, job, reason)
            return
        if job.mode != "block":
            fut.add_done_callback(lambda f: self._background(job, sha, f))
            return
        try:
            v = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self.skip("timeout")
            fut.add_done_callback(lambda f: self._background(job, sha, f))
            return await self._unverified(flow, job, "timeout")
        await self._decided(flow, job, sha, v, info)

    async def _sha(self, data: bytes) -> str:
        if len(data) <= HASH_INLINE:
            return hashlib.sha256(data).hexdigest()
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())

    async def _decided(
        self, flow: http.HTTPFlow, job: im.Job, sha: str, v: im.Verdict, info: dict
    ) -> None:
        """A verdict known while the response is still ours: into the record, learning, placeholder."""
        thr = self.rt.config.images.threshold
        info["image_verdict"] = v.label(thr)
        if v.score is not None:
            info["image_score"] = round(v.score, 4)
        if v.score is None:
            if job.mode == "block":
                await self._replace(
                    flow, job, v, "image_unverified", f"image unreadable: {v.error}"
                )
            return
        if v.explicit(thr):
            self._learn(job, sha, v.score)
            if job.mode == "block":
                await self._replace(
                    flow, job, v, "explicit_image",
                    f"explicit image (score {v.score:.3f} >= {thr})",
                )  # fmt: skip

    async def _unverified(self, flow: http.HTTPFlow, job: im.Job, why: str) -> None:
        """Block mode without a verdict in time: images.on_timeout decides (pass by default)."""
        info = flow.metadata.setdefault("cipa_image", {})
        info["image_verdict"] = why
        if self.rt.config.images.on_timeout == "block":
            await self._replace(
                flow, job, None, "image_unverified", f"image not checked in time ({why})"
            )

    async def _replace(
        self, flow: http.HTTPFlow, job: im.Job, v: im.Verdict | None, category: str, reason: str
    ) -> None:
        """Swap the body for a neutral placeholder of the same type (and size, when known)."""
        resp = flow.response
        if resp is None:
            return
        d: Decision | None = flow.metadata.get("cipa_decision")
        w, h = (v.width, v.height) if v is not None and v.width else (64, 64)
        try:
            body = await asyncio.to_thread(im.placeholder, job.kind, w, h)
        except Exception:
            log.exception("cannot draw a placeholder; answering 403 without a body")
            flow.response = http.Response.make(
                403, b"", {"Cache-Control": "no-store", "X-Cipa-Request-Id": job.rid}
            )
            body = None
        if body is not None:
            for name in (
                "content-encoding",
                "etag",
                "last-modified",
                "content-md5",
                "accept-ranges",
            ):
                resp.headers.pop(name, None)
            resp.headers.pop("transfer-encoding", None)
            resp.content = body
            resp.headers["content-length"] = str(len(body))
            resp.headers["cache-control"] = "no-store"
            resp.headers["x-cipa-image"] = "replaced"
        flow.metadata.setdefault("cipa_image", {})["image_action"] = "placeholder"
        if d is not None:
            flow.metadata["cipa_decision"] = replace(
                d, action=BLOCK, category=category, rule="images", reason=reason
            )

    # ------------------------------------------------------------------ background verdicts

    def tapped(self, job: im.Job, data: bytes) -> None:
        """End of a streamed (unknown-length) image: classify it in the background."""
        ic = self.rt.config.images
        if len(data) < ic.min_bytes:
            return self.skip("too_small")
        if im.sniff(data) is None:
            return self.skip("not_image")
        self._spawn(self._tapped(job, data))

    async def _tapped(self, job: im.Job, data: bytes) -> None:
        try:
            sha = await self._sha(data)
            v = self.cache.get(sha)
            if v is not None:
                self.rt.metrics.image_cache_hits.inc()
                return self._after(job, sha, v)
            pool = self.pool
            fut = pool.submit(sha, data) if pool is not None else None
            if fut is None:
                return self.skip("queue_full" if pool is not None and pool.ready else "unavailable")
            fut.add_done_callback(lambda f: self._background(job, sha, f))
        except Exception:
            log.exception("background image check failed for request %s", job.rid)

    def _background(self, job: im.Job, sha: str, fut: asyncio.Future) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        v = fut.result() if exc is None else im.Verdict(None, error=str(exc))
        self._after(job, sha, v)

    def _after(self, job: im.Job, sha: str, v: im.Verdict) -> None:
        """A verdict that arrived after the request was recorded: its own audit record, learning."""
        try:
            thr = self.rt.config.images.threshold
            label = v.label(thr)
            if label != "clean" or self.rt.config.audit.log_allowed:
                rec = {
                    "type": "image", "id": job.rid, "client": job.client, "user": job.user,
                    "group": job.group, "host": job.host, "url": job.url, "mode": job.mode,
                    "image_sha256": sha, "image_score": None if v.score is None else round(v.score, 4),
                    "image_verdict": label,
                }  # fmt: skip
                self.rec.event(rec)
            if v.score is not None and v.explicit(thr):
                self._learn(job, sha, v.score)
        except Exception:
            log.exception("cannot record the image verdict for request %s", job.rid)

    # ------------------------------------------------------------------ learning

    def _learn(self, job: im.Job, sha: str, score: float) -> None:
        if job.mode not in im.LEARNING_MODES:
            return
        try:
            host = canonical_host(job.host)
        except Malformed:
            return
        if not host or is_ip_literal(host):
            return
        site = im.site_of(host)
        url = job.url.split("?", 1)[0]
        evidence = self.learner.observe(site, sha, score, url)
        if evidence:
            self._spawn(self._write_learned(job, site, evidence))

    async def _write_learned(self, job: im.Job, site: str, evidence: list[im.Evidence]) -> None:
        cfg = self.rt.config
        ev = [e.as_dict() for e in evidence]
        store = LearnedStore(cfg.rules_dir)
        try:
            added = await asyncio.to_thread(store.learn, site, ev)
        except Exception as exc:
            log.error("cannot write %s to %s: %s", site, store.yaml_path, exc)
            self.learner.forget(site)
            return
        if not added:
            log.info("%s served explicit images but is already listed or was rejected", site)
            return
        log.warning(
            "learned %s (%d explicit images within %.0fs): added to %s",
            site, len(ev), cfg.images.learn_window, store.yaml_path,
        )  # fmt: skip
        if self.rt.events is not None:
            self.rt.events({
                "type": "learned", "event": "learned", "domain": site,
                "category": im.LEARNED_CATEGORY, "group": job.group, "policy": job.policy,
                "hits": len(ev), "window_seconds": cfg.images.learn_window,
                "threshold": cfg.images.threshold, "evidence": ev,
            })  # fmt: skip


__all__ = ["ImageScan"]
