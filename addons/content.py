"""Page content scoring and download rules on flows (``proxy/content.py``, ``proxy/downloads.py``).

Runs after ``Filter`` (which has decided the URL) and before the recorder:

- ``request``: a blocked file extension in the URL path is blocked before
  anything is fetched.
- ``responseheaders``: ``Content-Disposition`` file names and the media type
  are checked before the body is read; a blocked download is replaced by the
  block page at once (the rest of the upstream body is discarded, never sent).
  Then, for a page the policy scores (text/html, text/plain, JSON; allowed, not
  on an allow-listed category), the body is kept buffered so that it can be
  scored before any byte reaches the client (``cipa_buffer``, ``cipa_buffer_cap``). A body without
  Content-Length is buffered up to ``content.max_bytes``; past that it streams
  through unscanned (counted) and is recorded before its first byte.
- ``response``: decode, extract the visible text, score; over the policy's
  ``content_threshold`` the page is replaced by the block page naming the
  category and the heaviest phrases. The score and phrases go to the audit record.

Fail closed: an error in any hook blocks the response and is logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mitmproxy import http

from proxy import content
from proxy.blockpage import category_words
from proxy.config import Downloads, Policy
from proxy.downloads import Blocked, Rules
from proxy.model import BLOCK, Decision

from .filter import Filter
from .record import STREAM_ABOVE, Recorder
from .runtime import Runtime

log = logging.getLogger("cipa.content")

DOWNLOADS = "downloads"  # the category named on a blocked download's page and record


class _Discard:
    """Stream callable for a response we replaced in ``responseheaders``: sends our block page
    once and drops every byte of the upstream body."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, data: bytes) -> bytes:
        out, self.body = self.body, b""
        return out


# --------------------------------------------------------------------------- bounded buffering
#
# mitmproxy either streams a body (headers sent at once) or buffers all of it; its only size
# switch (`stream_large_bodies`) is global and would also stream large *request* bodies
# upstream before the `request` hook decides them. So one method is wrapped: a response this
# addon buffers for scoring (``cipa_buffer_cap``) turns into a stream once its body
# passes the cap, exactly as `stream_large_bodies` would do, after the recorder has written
# its record. Checked at start-up; if mitmproxy's internals differ, bodies of unknown length
# are streamed unscanned instead (never buffered without a bound).

_on_switch: Callable[[http.HTTPFlow], None] | None = None


def _install_bounded_buffering() -> bool:
    try:
        from mitmproxy.proxy.layers.http import HttpStream, ResponseData

        orig = HttpStream.check_body_size
        if getattr(orig, "_cipa", False):
            return True
        for name in ("start_response_stream", "handle_event"):
            if not hasattr(HttpStream, name):
                raise AttributeError(f"mitmproxy HttpStream has no {name}")

        def check_body_size(self, request: bool):  # type: ignore[no-untyped-def]
            flow = self.flow
            resp = flow.response
            if not request and resp is not None and not resp.stream:
                cap = flow.metadata.get("cipa_buffer_cap")
                if cap and len(self.response_body_buf) > cap:
                    resp.stream = True
                    if _on_switch is not None:
                        _on_switch(flow)
                    buf = bytes(self.response_body_buf)
                    self.response_body_buf.clear()
                    yield from self.start_response_stream()
                    yield from self.handle_event(ResponseData(self.stream_id, buf))
                    return False
            return (yield from orig(self, request))

        check_body_size._cipa = True  # type: ignore[attr-defined]
        HttpStream.check_body_size = check_body_size
        return True
    except Exception:
        log.exception(
            "cannot bound response buffering in this mitmproxy version: pages without "
            "Content-Length will not be scored"
        )
        return False


class ContentFilter:
    def __init__(self, rt: Runtime, flt: Filter, recorder: Recorder):
        global _on_switch
        self.rt = rt
        self.flt = flt
        self.rec = recorder
        self._rules: dict[Downloads, Rules] = {}
        self.bounded = _install_bounded_buffering()
        _on_switch = self._switched_to_stream

    # ------------------------------------------------------------------ helpers

    def _policy(self, d: Decision | None) -> Policy | None:
        """The decision's policy as it stands now (with its active schedules' changes)."""
        if d is None or d.blocked:
            return None
        policy = self.rt.config.policies.get(d.policy)
        engine = self.rt.engine
        if policy is not None and policy.during and engine is not None:
            policy = engine.policy_now(d.policy)
        return policy

    def _download_rules(self, policy: Policy) -> Rules:
        dl = policy.downloads
        rules = self._rules.get(dl)
        if rules is None:
            if len(self._rules) > 64:  # old configs after many reloads
                self._rules.clear()
            rules = self._rules[dl] = Rules.build(
                dl.block_extensions, dl.block_mime, dl.allow_sites, dl.block_audio_video
            )
        return rules

    def _block_download(
        self, flow: http.HTTPFlow, d: Decision, policy: Policy, hit: Blocked
    ) -> None:
        self.rt.metrics.download_blocks.labels(rule=hit.rule).inc()
        rule = f"{policy.downloads.source or policy.source} (downloads: {hit.rule} {hit.detail})"
        blocked = Decision(BLOCK, DOWNLOADS, d.group, d.policy, rule, hit.reason, d.url)
        flow.metadata["cipa_replaced_early"] = True
        self.flt._block(flow, blocked, flow.metadata.get("cipa_id", ""), 403)

    def _fail(self, flow: http.HTTPFlow, hook: str, *, streaming: bool = False) -> None:
        rid = flow.metadata.get("cipa_id", "")
        log.exception("content filter error in %s (request %s); blocking", hook, rid)
        self.rt.metrics.filter_errors.inc()
        d: Decision | None = flow.metadata.get("cipa_decision")
        err = Decision(
            BLOCK,
            "filter_error",
            d.group if d else "",
            d.policy if d else "",
            "content filter",
            "filter error (the page was blocked to stay safe)",
            d.url if d else "",
        )
        try:
            self.flt._block(flow, err, rid, 403)
        except Exception:  # the block page itself failed: send the bare minimum
            flow.metadata["cipa_decision"] = err
            flow.response = http.Response.make(403, b"Blocked.\n", {"Content-Type": "text/plain"})
        if streaming and flow.response is not None:
            flow.response.stream = _Discard(flow.response.raw_content or b"")
            flow.metadata["cipa_replaced_early"] = True

    def _switched_to_stream(self, flow: http.HTTPFlow) -> None:
        """A buffered page passed ``content.max_bytes``: it streams on unscanned; record it first."""
        meta = flow.metadata
        if (
            meta.pop("cipa_scan", None) is not None
        ):  # a page we meant to score (not an image held by another addon)
            self.rt.metrics.counter("content_scans", result="too_large").inc()
        meta["cipa_bytes_out"] = None
        if not meta.get("cipa_recorded"):
            self.rec._flow(flow)
            meta["cipa_recorded"] = True

    # ------------------------------------------------------------------ hooks

    def request(self, flow: http.HTTPFlow) -> None:
        """A blocked extension in the URL path: blocked before anything is fetched."""
        if flow.response is not None:
            return
        try:
            d = flow.metadata.get("cipa_decision")
            policy = self._policy(d)
            if policy is None:
                return
            rules = self._download_rules(policy)
            if not rules.active:
                return
            r = flow.request
            host = flow.metadata.get("cipa_host") or r.pretty_host
            hit = rules.check_request(host, r.path, r.headers.get("sec-fetch-dest", ""))
            if hit is not None:
                self._block_download(flow, d, policy, hit)
        except Exception:
            self._fail(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        meta = flow.metadata
        if resp is None or meta.get("cipa_id") is None:
            return
        try:
            d = meta.get("cipa_decision")
            policy = self._policy(d)
            if policy is None:
                return
            r = flow.request
            rules = self._download_rules(policy)
            if rules.active:
                hit = rules.check_response(
                    r.pretty_host,
                    r.path,
                    resp.headers.get("content-type"),
                    resp.headers.get("content-disposition"),
                    r.headers.get("sec-fetch-dest", ""),
                )
                if hit is not None:
                    self._block_download(flow, d, policy, hit)
                    # Our page goes out now; the upstream body is read and dropped.
                    flow.response.stream = _Discard(flow.response.raw_content or b"")
                    return
            if not self._scores(flow, d, policy):
                return
            cap = self.rt.config.content.max_bytes
            length = resp.headers.get("content-length", "")
            if resp.stream:
                self.rt.metrics.counter("content_scans", result="too_large").inc()
            elif length.isdigit():
                if int(length) > cap:
                    self.rt.metrics.counter("content_scans", result="too_large").inc()
                else:
                    meta["cipa_scan"] = policy  # scored in `response` under this policy
                    if int(length) > STREAM_ABOVE:
                        meta["cipa_buffer"] = True  # the recorder must not stream it
            elif self.bounded:
                meta["cipa_scan"] = policy
                meta["cipa_buffer"] = True  # the recorder must not stream it ...
                meta["cipa_buffer_cap"] = cap  # ... until past the cap: then streams unscanned
            else:
                self.rt.metrics.counter("content_scans", result="too_large").inc()
        except Exception:
            self._fail(flow, "responseheaders", streaming=True)

    def _scores(self, flow: http.HTTPFlow, d: Decision, policy: Policy) -> bool:
        """Does this response get scored? Allowed, a threshold set, not an allow-listed category,
        a text type, and a body to read."""
        phrases = self.rt.config.content.phrases
        if policy.content_threshold <= 0 or phrases is None:
            return False
        if d.category is not None and d.category in policy.allow:
            return False  # allow-listed categories are never scored
        if flow.metadata.get("cipa_override"):
            return False  # an authorised adult lifted the block for this site
        if not (policy.block & phrases.categories):
            return False
        resp = flow.response
        if (
            flow.request.method == "HEAD"
            or resp.status_code in (204, 304)
            or resp.status_code < 200
        ):
            return False
        return content.content_kind(resp.headers.get("content-type")) is not None

    def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata
        if meta.get("cipa_replaced_early"):
            resp = flow.response
            unsent = isinstance(resp.stream, _Discard) and resp.stream.body if resp else False
            if resp is not None and (unsent or not resp.stream):
                # The upstream response had no body, so nothing was streamed and mitmproxy put
                # that empty body in our page: render the page again (sent in full now).
                d = meta.get("cipa_decision")
                self.flt._block(flow, d, meta.get("cipa_id", ""), 403)
            return
        if not meta.get("cipa_scan"):
            return
        try:
            self._score(flow)
        except Exception:
            self._fail(flow, "response")

    def _score(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata
        resp = flow.response
        m = self.rt.metrics
        if resp is None or resp.stream:
            return
        d: Decision = meta["cipa_decision"]
        policy: Policy = meta["cipa_scan"]
        cfg = self.rt.config.content
        phrases = cfg.phrases
        if phrases is None:
            return
        raw = resp.raw_content or b""
        if len(raw) > cfg.max_bytes:
            m.counter("content_scans", result="too_large").inc()
            return
        start = time.perf_counter()
        cats = policy.block & phrases.categories
        try:
            score = phrases.score_body(
                raw,
                resp.headers.get("content-type"),
                resp.headers.get("content-encoding"),
                cfg.max_decoded_bytes,
                cats,
                policy.content_threshold,
            )
        except content.ContentError as exc:
            m.counter("content_scans", result="error").inc()
            log.warning("cannot decode %s for scoring: %s; blocking", d.url, exc)
            unreadable = Decision(
                BLOCK, "filter_error", d.group, d.policy, "content filter",
                f"the page could not be checked ({exc})", d.url,
            )  # fmt: skip
            self.flt._block(flow, unreadable, meta.get("cipa_id", ""), 403)
            return
        category, total = score.worst(cats)
        m.content_seconds.observe(time.perf_counter() - start)
        m.content_bytes.inc(len(raw))
        if category is None:
            meta["cipa_score"] = 0
            m.counter("content_scans", result="clean").inc()
            return
        top = score.top(category)
        meta["cipa_score"] = total
        if score.partial:
            meta["cipa_score_partial"] = True
        meta["cipa_score_category"] = category
        meta["cipa_phrases"] = top
        threshold = policy.content_threshold
        if total < threshold:
            m.counter("content_scans", result="clean").inc()
            return
        m.counter("content_scans", result="blocked").inc()
        named = ", ".join(f'"{p}"' for p in top) or "several phrases"
        blocked = Decision(
            BLOCK,
            category,
            d.group,
            d.policy,
            f"content score {total} >= {threshold} ({policy.source} content_threshold)",
            f"the page's text scored {total} for {category_words_for(category)} "
            f"(limit {threshold}); top phrases: {named}",
            d.url,
        )
        self.flt._block(flow, blocked, meta.get("cipa_id", ""), 403)


def category_words_for(category: str) -> str:
    return category_words(Decision(BLOCK, category, "", "", "", "")).lower()
