"""The adult override, click by click, in real Chromium through the running proxy."""

from __future__ import annotations

from e2e.harness import ProxyProcess

from .conftest import STAFF_PASSWORD, STAFF_USER, audit_record

SITE = "pokerstars.com"  # gambling; other browser tests use www.bet365.com, which stays blocked


def test_override_flow_click_by_click(site_proxy: ProxyProcess, new_page, screenshot) -> None:
    page = new_page()
    resp = page.goto(f"http://{SITE}/tables")
    assert resp is not None and resp.status == 403
    blocked_rid = page.locator("#request-id").inner_text()

    page.click("#staff-override")
    assert page.get_by_role("heading", level=1).inner_text() == "Staff override"
    page.fill("#u", STAFF_USER)
    page.fill("#p", "not the password")
    page.fill("#r", "probability lesson on betting odds")
    page.click("button[type=submit]")
    assert "Override refused: user name or password not accepted" in page.content()

    page.fill("#u", STAFF_USER)
    page.fill("#p", STAFF_PASSWORD)
    page.fill("#r", "probability lesson on betting odds")
    screenshot(page, "override-form-chromebook")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"http://{SITE}/tables"
    assert "internet GET pokerstars.com /tables" in page.inner_text("body")

    records = site_proxy.audit_records()
    events = [(r["event"], r["user"]) for r in records if r.get("type") == "override"]
    assert events[-2:] == [("refused", STAFF_USER), ("granted", STAFF_USER)]
    used = [r for r in records if r.get("override") and r.get("host") == SITE]
    assert used and used[-1]["action"] == "allow"
    assert audit_record(site_proxy, blocked_rid)["action"] == "block"
