"""The adult override flow: the sign-in page on a blocked site, the grant, and its use.

``GET /__cipa/override?url=...`` on the blocked host shows a sign-in form;
``POST`` checks the credentials with the proxy's sign-in backend, checks that
the signer's group may override (``override: true``) and that the category
allows it (not ``override: never``), records the grant and redirects back.
``Filter`` asks ``lift()`` about every blocked decision; an active grant for
that user (or address) and registered domain turns it into an allow, marked
in the audit record. Every grant, refusal and use is in the audit trail.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from urllib.parse import parse_qs, urlencode

from mitmproxy import http

from proxy.canonical import Malformed, canonical_host, canonical_url
from proxy.domains import registered_domain
from proxy.model import ALLOW, Decision, Request
from proxy.overrides import OVERRIDE_PATH, Grant, OverrideStore, load_key

from .record import Recorder, flow_client
from .runtime import Runtime, new_request_id

log = logging.getLogger("cipa.override")

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Staff override</title>
<style>body{{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0}}main{{max-width:32rem;margin:3rem auto;
background:#fff;padding:2rem;border-radius:12px}}label{{display:block;margin-top:1rem;font-weight:600}}
input,textarea{{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}}button{{margin-top:1.2rem;padding:.6rem 1.2rem;
font-size:1rem}}.msg{{color:#8a1c1c}}</style></head>
<body><main><h1>Staff override</h1>
<p>Authorised adults may open <strong>{site}</strong> for {minutes} minutes for bona fide research or another lawful
purpose (Children's Internet Protection Act). Your name, the reason and the time are recorded.</p>
<p class="msg">{message}</p>
<form method="post" action="{action}">
<input type="hidden" name="url" value="{url}">
<label for="u">User name</label><input id="u" name="username" autocomplete="username" required>
<label for="p">Password</label><input id="p" name="password" type="password" autocomplete="current-password" required>
<label for="r">Reason</label><textarea id="r" name="reason" rows="3" required minlength="5"></textarea>
<button type="submit">Open this site</button>
</form></main></body></html>
"""


class Override:
    def __init__(self, rt: Runtime, recorder: Recorder):
        self.rt = rt
        self.rec = recorder
        self._store: tuple[object, OverrideStore] | None = None

    def store(self) -> OverrideStore:
        cfg = self.rt.config.overrides
        if self._store is None or self._store[0] is not cfg:
            self._store = (cfg, OverrideStore(load_key(cfg.key_file), cfg.state_file))
        return self._store[1]

    # ------------------------------------------------------------------ use

    def lift(
        self, d: Decision, host: str, user: str | None, client: str
    ) -> tuple[Decision, Grant | None]:
        """An active grant turns a block into an allow (never for ``override: never`` categories)."""
        engine = self.rt.engine
        if not d.blocked or d.category is None or engine is None:
            return d, None
        info = engine.rules.categories.get(d.category)
        if info is None or info.override_never:
            return d, None
        try:
            domain = registered_domain(canonical_host(host))
        except Malformed:
            return d, None
        g = self.store().find(user, client, domain)
        if g is None:
            return d, None
        self.rt.metrics.overrides.labels(event="used").inc()
        until = time.strftime("%H:%M", time.localtime(g.expires_at))
        return (
            Decision(
                ALLOW,
                d.category,
                d.group,
                d.policy,
                f"override {g.id}",
                f"adult override by {g.user} until {until}: {g.reason}",
                d.url,
            ),  # fmt: skip
            g,
        )

    # ------------------------------------------------------------------ the page

    def request(self, flow: http.HTTPFlow):
        if flow.response is not None or not flow.request.path.startswith(OVERRIDE_PATH):
            return None
        return self._handle(flow)  # mitmproxy awaits the coroutine; other requests stay synchronous

    async def _handle(self, flow: http.HTTPFlow) -> None:
        rid = new_request_id()
        flow.metadata["cipa_id"] = rid
        try:
            if flow.request.method == "POST":
                await self._grant(flow, rid)
            else:
                target = (parse_qs(flow.request.path.partition("?")[2]).get("url") or [""])[0]
                self._form(flow, target, "")
        except Exception:
            log.exception("override page error (%s)", rid)
            self._form(flow, "", "Something went wrong; nothing was changed.")
        flow.metadata.setdefault(
            "cipa_decision",
            Decision(
                ALLOW,
                "override_page",
                "",
                "",
                "override",
                "staff override page",
                flow.request.pretty_url,
            ),
        )

    def _form(self, flow: http.HTTPFlow, target: str, message: str, status: int = 200) -> None:
        try:
            site = canonical_url(target).host if target else "this site"
        except Malformed:
            site, target = "this site", ""
        body = _FORM.format(
            site=html.escape(site),
            minutes=html.escape(f"{self.rt.config.overrides.minutes:g}"),
            message=html.escape(message),
            action=html.escape(OVERRIDE_PATH),
            url=html.escape(target),
        )
        flow.response = http.Response.make(
            status,
            body.encode(),
            {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
        )

    def _refuse(self, flow: http.HTTPFlow, target: str, why: str, user: str, rid: str) -> None:
        self.rt.metrics.overrides.labels(event="refused").inc()
        self.rec.event({"type": "override", "event": "refused", "id": rid, "client": flow_client(flow),
                        "user": user or None, "url": target, "reason": why})  # fmt: skip
        self._form(flow, target, f"Override refused: {why}.", 403)

    async def _grant(self, flow: http.HTTPFlow, rid: str) -> None:
        form = flow.request.urlencoded_form
        target, user = form.get("url", ""), form.get("username", "").strip()
        password, reason = form.get("password", ""), " ".join(form.get("reason", "").split())
        client = flow_client(flow)
        engine, auth = self.rt.engine, self.rt.authenticator()
        if engine is None or auth is None:
            return self._refuse(
                flow, target, "staff sign-in is not configured on this proxy", user, rid
            )
        try:
            u = canonical_url(target)
        except Malformed:
            return self._refuse(flow, target, "the address is not valid", user, rid)
        if len(reason) < 5:
            return self._refuse(flow, target, "please give a reason", user, rid)
        identity = await asyncio.to_thread(auth.check, user, password)
        if identity is None:
            self.rt.metrics.auth_failures.inc()
            return self._refuse(flow, target, "user name or password not accepted", user, rid)
        group = engine.group_for(client, identity.user, identity.groups)
        policy = self.rt.config.policies.get(group.policy)
        if policy is None or not policy.override:
            return self._refuse(
                flow, target, f"group {group.name} may not override blocks", identity.user, rid
            )
        d = engine.decide(Request(host=u.host, path=u.path, scheme=u.scheme, port=u.port, client=client,
                                  user=flow.metadata.get("cipa_user"),
                                  member_of=flow.metadata.get("cipa_member_of") or frozenset()))  # fmt: skip
        if not d.blocked:
            flow.response = http.Response.make(
                303, b"", {"Location": str(u), "Cache-Control": "no-store"}
            )
            return None
        info = engine.rules.categories.get(d.category or "")
        if info is None or info.override_never:
            return self._refuse(
                flow,
                target,
                f"category {d.category or 'default'} can never be overridden",
                identity.user,
                rid,
            )
        minutes = self.rt.config.overrides.minutes
        g = self.store().grant(
            identity.user, client, registered_domain(u.host), d.category or "", reason, minutes
        )
        self.rt.metrics.overrides.labels(event="granted").inc()
        self.rec.event({"type": "override", "event": "granted", "id": rid, "grant": g.id, "client": client,
                        "user": g.user, "domain": g.domain, "category": g.category, "reason": g.reason,
                        "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(g.expires_at))})  # fmt: skip
        flow.metadata["cipa_decision"] = Decision(
            ALLOW,
            "override_page",
            group.name,
            group.policy,
            f"override {g.id}",
            "override granted",
            str(u),
        )
        flow.response = http.Response.make(
            303, b"", {"Location": str(u), "Cache-Control": "no-store", "X-Cipa-Override": g.id}
        )
        return None


def override_link(url: str, rid: str) -> str:
    return f"{OVERRIDE_PATH}?{urlencode({'url': url, 'rid': rid})}"


__all__ = ["Override", "override_link"]
