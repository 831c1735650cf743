"""The analyst workbench in a real browser (Debian's Chromium through Playwright) against a real
server over a small simulated plant (``conftest.py``).

* the flow an analyst follows: suggestions as they type (keyboard), search -> recall impact
  (charts, the units table that sorts, filters and pages) -> genealogy tree (expand, find) ->
  unit passport -> report download (CSV, PDF, HTML), with the answers checked against the API;
* a search for something that does not exist: "not found" with the API's near misses;
* an alert raised while the feed is open arrives without a reload, is filtered by severity and
  acknowledged;
* the pipeline status page; an analyst of one programme sees only that programme; sign-in
  refuses a bad token; every page at 800 px wide.

Screenshots of every page go to ``var/screenshots/`` (``WORKBENCH_SCREENSHOTS=docs/screenshots``
refreshes the README's). The time from clicking Search to an interactive recall page of the
plant's largest lot, and to its tree fully expanded, is printed (``-s`` shows it), not asserted.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.plant import Workbench, largest_lot, nc_event

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# var/screenshots by default (a test run leaves the committed pictures alone);
# WORKBENCH_SCREENSHOTS=docs/screenshots refreshes the ones the README links
SCREENSHOTS = Path(
    os.environ.get("WORKBENCH_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "var" / "screenshots"
)
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 800, "height": 900}


@pytest.fixture
def page(browser: Browser, workbench: Workbench) -> Iterator[Page]:
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # a 404 from the API is an answer (not found, with suggestions); an asset that fails is a bug
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    pg.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}")
            if r.status >= 400
            and (r.status >= 500 or "/static/" in r.url or r.url.rstrip("/") == workbench.url)
            else None
        ),
    )
    pg.set_default_timeout(60_000)
    yield pg
    context.close()
    assert not errors, f"errors in the page: {errors}"


def sign_in(pg: Page, wb: Workbench, token: str | None = None) -> None:
    pg.goto(wb.url + "/")
    expect(pg.locator("#signin")).to_be_visible()
    pg.fill("#token", token or wb.admin)
    pg.press("#token", "Enter")
    expect(pg.locator("#signout")).to_be_visible()


def shot(pg: Page, name: str, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.wait_for_timeout(300)  # charts and fonts settle
    pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def test_search_recall_tree_passport_report(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    lot, impact = largest_lot(wb)
    sign_in(pg, wb)

    # suggestions as you type, chosen with the keyboard
    pg.locator("#q").press_sequentially(lot[:-2], delay=30)
    options = pg.locator("#suggestions [role=option]")
    expect(options.first).to_be_visible()
    expect(pg.locator("#q")).to_have_attribute("aria-expanded", "true")
    api_hits = wb.get("/search/suggest", q=lot[:-2], limit=10).json()
    assert [o.get_attribute("data-kind") for o in options.all()] == [h["kind"] for h in api_hits]
    shot(pg, "search-suggestions")
    pg.keyboard.press("ArrowDown")
    expect(pg.locator("#q")).to_have_attribute("aria-activedescendant", "sugg-0")
    pg.keyboard.press("Escape")
    expect(pg.locator("#suggestions")).to_be_hidden()

    # search -> recall impact (timed: click to an interactive page)
    pg.fill("#q", lot)
    t0 = time.perf_counter()
    pg.click("#search button[type=submit]")
    pg.wait_for_selector("#units-table[data-ready=true]")
    expect(pg.locator("#freshness")).to_contain_text("consumer lag")
    recall_s = time.perf_counter() - t0
    now, past = len(impact["units"]), len(impact["past"])
    expect(pg.locator("h1")).to_contain_text(lot)
    expect(pg.locator("#impact-summary")).to_contain_text(f"{now} units")
    expect(pg.locator("#impact-summary")).to_contain_text(f"{past} past holders")
    expect(pg.locator("#units-count")).to_have_text(
        f"{now + past} of {now + past} rows shown by the filters."
    )
    expect(pg.locator("#freshness")).to_contain_text("consumer lag")
    for chart, counts in (("customer", impact["by_customer"]), ("status", impact["by_status"])):
        label = pg.locator(f"#chart-{chart}").get_attribute("aria-label") or ""
        for key, n in counts.items():
            assert f"{key}: {n}" in label, (chart, key, n, label)
    shot(pg, "recall")

    # the table filters, sorts and pages
    grid = pg.locator("#units-table")
    uii_filter = grid.locator(".tabulator-col[tabulator-field=uii] input")
    uii_filter.press_sequentially(impact["units"][0]["uii"])  # typed: the filter runs as you type
    expect(pg.locator("#units-count")).to_have_text(f"1 of {now + past} rows shown by the filters.")
    uii_filter.press("Control+a")
    uii_filter.press("Backspace")
    expect(pg.locator("#units-count")).to_contain_text(f"{now + past} of {now + past}")
    grid.locator(".tabulator-col[tabulator-field=status] .tabulator-col-title").click()
    first_status = grid.locator(".tabulator-row .tabulator-cell[tabulator-field=status]").first.inner_text()
    assert first_status == min(u["status"] for u in impact["units"] + impact["past"]), first_status
    customer = grid.locator(".tabulator-col[tabulator-field=customer]")
    customer.focus()  # by keyboard: a header takes the focus, Enter sorts by it
    pg.keyboard.press("Enter")
    expect(customer).to_have_attribute("aria-sort", "ascending")
    pg.keyboard.press("Enter")
    expect(customer).to_have_attribute("aria-sort", "descending")
    if now + past > 25:
        expect(grid.locator(".tabulator-page[data-page='2']")).to_be_visible()

    # report downloads: the CSV lists exactly the units the API's recall names
    with pg.expect_download() as got:
        pg.click("#report-csv")
    rows = list(csv.reader(io.StringIO(open(got.value.path(), encoding="utf-8").read())))
    listed = {cell for row in rows for cell in row}
    assert {u["uii"] for u in impact["units"]} <= listed
    assert got.value.suggested_filename.endswith(".csv")
    for fmt, magic in (("pdf", b"%PDF"), ("html", b"<!")):
        with pg.expect_download() as got:
            pg.click(f"#report-{fmt}")
        assert open(got.value.path(), "rb").read(200).lstrip().startswith(magic), fmt
    expect(pg.locator("#report-status")).to_contain_text("Downloaded")
    pg.click("#drill")
    expect(pg.locator("#report-status")).to_contain_text("recall drill", timeout=120_000)

    # genealogy tree, forward from the lot: timed to fully expanded, then find a unit in it
    tree = wb.get("/tree", kind="lot", id=lot).json()
    t1 = time.perf_counter()
    pg.click("a.button:has-text('Genealogy tree')")
    pg.wait_for_selector("#tree[data-ready=true]")
    tree_open_s = time.perf_counter() - t1
    expect(pg.locator("#tree-info")).to_contain_text(f"{len(tree['nodes'])} nodes, {tree['units']} units")
    t2 = time.perf_counter()
    pg.click("#expand-all")
    pg.wait_for_selector("#tree[data-expanded=all][data-ready=true]")
    expand_s = time.perf_counter() - t2
    shown = pg.evaluate("Tabulator.findTable('#tree')[0].getRows('display').length")
    assert shown == len(tree["nodes"]), (shown, len(tree["nodes"]))
    shot(pg, "tree-forward")
    pg.click("#collapse-all")
    pg.wait_for_selector("#tree[data-expanded=none][data-ready=true]")
    target = impact["units"][-1]["uii"]
    pg.fill("#tree-search", target)
    pg.press("#tree-search", "Enter")
    expect(pg.locator("#tree-find")).to_contain_text("match 1 of")
    expect(pg.locator("#tree .tabulator-row.current")).to_contain_text(target)

    print(
        f"\nWORKBENCH TIMING ({wb.units} simulated units, {wb.events} events):"
        f" lot {lot} with {now} units now,"
        f" {past} past: search click -> interactive recall page {recall_s:.2f} s;"
        f" tree ({len(tree['nodes'])} nodes) opened {tree_open_s:.2f} s, expand all {expand_s:.2f} s"
        f" (search click -> tree fully expanded, without the analyst's own time:"
        f" {recall_s + tree_open_s + expand_s:.2f} s)"
    )

    # the unit's passport from the tree, then its system's backward tree
    pg.locator("#tree .tabulator-row.current a").first.click()
    pg.wait_for_selector(".page-passport[data-ready=true]")
    passport = wb.get("/passport", serial=target).json()
    expect(pg.locator("h1")).to_contain_text(target)
    expect(pg.locator("#s-identity")).to_be_visible()
    for op in passport["operations"]:
        expect(pg.locator("#s-operations + .scroll")).to_contain_text(op["operation"])
    assert pg.locator(".test").count() == len(passport["tests"])
    shot(pg, "passport")
    # the assembly it sits in lists what reaches it through the unit (an NC on the unit's lot)
    if passport["parent_uii"]:
        above = wb.get("/passport", serial=passport["parent_uii"]).json()
        through = [n for n in above["nonconformances"] if n["via_uii"]]
        if through:
            pg.goto(wb.url + f"/#/passport?uii={passport['parent_uii']}")
            pg.wait_for_selector(".page-passport[data-ready=true]")
            ncs = pg.locator("#s-nonconformances + .scroll")
            expect(ncs).to_contain_text(f"through {through[0]['via_uii']} inside it")
            shot(pg, "passport-assembly")
            pg.go_back()
            pg.wait_for_selector(".page-passport[data-ready=true]")
    pg.click("a.button:has-text('Genealogy tree of its system')")
    pg.wait_for_selector("#tree[data-ready=true]")
    backward = wb.get("/tree", kind="serial", id=passport["root_uii"]).json()
    expect(pg.locator("#tree-info")).to_contain_text(f"{len(backward['nodes'])} nodes")
    pg.click("#expand-all")
    pg.wait_for_selector("#tree[data-expanded=all][data-ready=true]")
    shown = pg.evaluate("Tabulator.findTable('#tree')[0].getRows('display').length")
    assert shown == len(backward["nodes"]), (shown, len(backward["nodes"]))


def test_backward_tree_highlights_suspect_lots(page: Page, workbench: Workbench) -> None:
    """A system that holds a lot under a nonconformance or on hold: that lot's rows are marked
    (class ``bad``, with the reason), and only those."""
    wb, pg = workbench, page
    assert wb.server.store is not None
    suspect = wb.server.store.query(
        "SELECT target_id AS lot FROM nonconformances WHERE target_kind = 'LOT'"
        " UNION DISTINCT SELECT lot_id AS lot FROM lot_status WHERE status IN ('HOLD', 'QUARANTINE')"
    )
    system = lot = None
    for r in suspect:
        units = wb.get("/recall", kind="lot", id=r["lot"]).json()["units"]
        if units:
            lot, system = str(r["lot"]), units[0]["root_uii"]
            break
    assert lot is not None and system is not None, "the plant should use a suspect lot"
    tree = wb.get("/tree", kind="serial", id=system).json()
    assert lot in tree["flagged_lots"]
    flagged_rows = [n for n in tree["nodes"] if n["kind"] == "lot" and n["flag"]]
    sign_in(pg, wb)
    pg.goto(wb.url + f"/#/tree?kind=serial&id={system}")
    pg.wait_for_selector("#tree[data-ready=true]")
    expect(pg.locator("#tree-info")).to_contain_text(f"suspect lots: {lot}")
    pg.click("#expand-all")
    pg.wait_for_selector("#tree[data-expanded=all][data-ready=true]")
    pg.fill("#tree-search", f"lot {lot}")
    pg.press("#tree-search", "Enter")
    current = pg.locator("#tree .tabulator-row.current")
    expect(current).to_have_class(re.compile(r"\bbad\b"))
    expect(current).to_contain_text(tree["flagged_lots"][lot].split(",")[0])
    marked = pg.evaluate(
        "Tabulator.findTable('#tree')[0].getRows('display')"
        ".filter(r => r.getData().flag && r.getData().kind === 'lot').length"
    )
    assert marked == len(flagged_rows)
    shot(pg, "tree-backward")


def test_not_found_shows_the_near_misses(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    lot = largest_lot(wb)[0]
    typo = lot[:-1] + ("X" if lot[-1] != "X" else "Y")
    api = wb.get("/search", q=typo)
    assert api.status_code == 404
    expected = api.json()["detail"]["suggestions"]
    recall_404 = wb.get("/recall", kind="lot", id=typo).json()["detail"]["suggestions"]
    assert expected and set(recall_404) <= set(expected), (recall_404, expected)
    sign_in(pg, wb)
    pg.fill("#q", typo)
    pg.press("#q", "Enter")
    box = pg.locator(".notfound")
    expect(box).to_contain_text("Not found")
    expect(box).to_contain_text(typo)
    assert pg.locator("#near-misses a").all_inner_texts() == expected
    shot(pg, "not-found")
    pg.locator("#near-misses a", has_text=f"lot:{lot}").click()
    pg.wait_for_selector("#units-table[data-ready=true]")
    expect(pg.locator("h1")).to_contain_text(lot)


def test_an_alert_arrives_live_and_is_acknowledged(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    sign_in(pg, wb)
    pg.click("#nav-alerts")
    expect(pg.locator("#feed-state")).to_contain_text("Feed live")
    lot = largest_lot(wb)[0]
    ncr = f"NCR-BROWSER-{uuid.uuid4().hex[:6].upper()}"
    wb.publish([nc_event(wb, lot, ncr)])
    item = pg.locator(f"#feed li[data-alert='NC_RAISED:{ncr}']")
    expect(item).to_be_visible(timeout=90_000)  # no reload: pushed by the server
    expect(item).to_have_count(1)
    expect(item).to_contain_text(ncr)
    expect(pg.locator("#alert-badge")).to_be_visible()
    # severity filter
    severity = item.locator(".sev").inner_text()
    pg.uncheck(f"#sev-{severity}")
    expect(item).to_be_hidden()
    pg.check(f"#sev-{severity}")
    expect(item).to_be_visible()
    # acknowledge: recorded on the server, under the caller's name
    item.locator("button.ack").click()
    expect(item).to_contain_text("acknowledged by wb-admin")
    shot(pg, "alerts", full_page=False)
    acks = wb.get("/alerts/acks", alert_id=f"NC_RAISED:{ncr}").json()
    assert [a["by"] for a in acks] == ["wb-admin"]
    # the impact link opens the lot's recall
    item.locator("a", has_text="Impact").click()
    pg.wait_for_selector("#units-table[data-ready=true]")
    expect(pg.locator("h1")).to_contain_text(lot)


def test_pipeline_status_page(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    sign_in(pg, wb)
    pg.click("#nav-status")
    pg.wait_for_selector(".page-status[data-ready=true]")
    health = wb.get("/health").json()
    expect(pg.locator("#overall")).to_contain_text(health["status"])
    for part in health["parts"]:
        expect(pg.locator("#s-parts + .scroll")).to_contain_text(part)
    ledger = wb.get("/ledger").json()["partitions"]
    for p, row in ledger.items():
        expect(pg.locator("#s-ledger-events-topic-per-partition- + .scroll")).to_contain_text(
            str(row["landed"])
        )
        assert p
    lag = pg.locator("#s-lag-and-throughput + .scroll")
    expect(lag).to_contain_text("per second")
    expect(lag).not_to_contain_text("measuring", timeout=10_000)  # a second poll: throughput measured
    shot(pg, "status")


def test_an_analyst_sees_only_their_programme(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    assert wb.server.store is not None
    other = wb.server.store.query(
        "SELECT uii FROM operations WHERE toString(program) != {p:String} AND creates_unit"
        " ORDER BY uii LIMIT 1",
        {"p": wb.analyst_program},
    )[0]["uii"]
    assert wb.get("/passport", token=wb.analyst, serial=other).status_code == 404
    assert wb.get("/passport", serial=other).status_code == 200
    hits = wb.get("/search/suggest", token=wb.analyst, q=other, limit=50).json()
    assert other not in {h["id"] for h in hits}
    sign_in(pg, wb, wb.analyst)
    pg.fill("#q", other)
    pg.press("#q", "Enter")
    expect(pg.locator(".notfound")).to_contain_text("Not found")
    shown = pg.locator("#near-misses a").all_inner_texts()  # may suggest units of their own only
    assert f"serial:{other}" not in shown and not any(s.startswith(other.split(":")[0]) for s in shown)
    pg.click("#nav-status")
    expect(pg.locator(".page-status")).to_contain_text("administrators only")


def test_sign_in_refuses_a_bad_token_and_data_needs_one(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    assert httpx.get(wb.url + "/", timeout=30).status_code == 200  # the page itself: no data
    for path in (
        "/search?q=x",
        "/search/suggest?q=x",
        "/passport?serial=a:b",
        "/tree?id=x",
        "/freshness",
        "/alerts/stream",
        "/alerts/acks?alert_id=x",
    ):
        assert httpx.get(wb.url + path, timeout=30).status_code == 401, path
    pg.goto(wb.url + "/")
    pg.fill("#token", "tl_not-a-token")
    pg.press("#token", "Enter")
    expect(pg.locator("#signin-error")).to_contain_text("not valid")
    assert pg.evaluate("sessionStorage.getItem('traceline.token')") is None
    shot(pg, "sign-in")


def test_every_page_works_at_800_px_and_labels_its_controls(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    lot, impact = largest_lot(wb)
    uii = impact["units"][0]["uii"]
    pg.set_viewport_size(NARROW)
    sign_in(pg, wb)
    pages = {
        "recall-800": (f"#/recall?kind=lot&id={lot}", "#units-table[data-ready=true]"),
        "tree-800": (f"#/tree?kind=lot&id={lot}", "#tree[data-ready=true]"),
        "passport-800": (f"#/passport?uii={uii}", ".page-passport[data-ready=true]"),
        "alerts-800": ("#/alerts", ".page-alerts[data-ready=true]"),
        "status-800": ("#/status", ".page-status[data-ready=true]"),
    }
    for name, (where, ready) in pages.items():
        pg.goto(wb.url + "/" + where)
        pg.wait_for_selector(ready)
        width = pg.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], (name, width)
        unlabelled = pg.evaluate(
            """[...document.querySelectorAll('input, select, button')]
                 .filter(e => e.offsetParent !== null)
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !(e.textContent || '').trim() && !e.getAttribute('placeholder'))
                 .map(e => e.outerHTML.slice(0, 80))"""
        )
        assert not unlabelled, (name, unlabelled)
        if name == "recall-800":
            shot(pg, name)
    # the whole flow by keyboard: focus the search box, type, Enter
    pg.goto(wb.url + "/#/")
    pg.keyboard.press("Tab")  # the skip link
    pg.keyboard.press("Tab")  # the home link
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.id") == "q"
    pg.keyboard.type(lot)
    pg.keyboard.press("Enter")
    pg.wait_for_selector("#units-table[data-ready=true]")
    expect(pg.locator("h1")).to_contain_text(lot)


def test_a_station_recall_takes_a_time_window(page: Page, workbench: Workbench) -> None:
    wb, pg = workbench, page
    assert wb.server.store is not None
    row = wb.server.store.query(
        "SELECT toString(station_id) AS s, min(started_at) AS t0 FROM operations"
        " GROUP BY s ORDER BY count() DESC, s LIMIT 1"
    )[0]
    station = row["s"]
    sign_in(pg, wb)
    pg.fill("#q", station)
    pg.press("#q", "Enter")
    pg.wait_for_selector("#units-table[data-ready=true]")
    whole = wb.get("/recall", kind="station", id=station).json()
    expect(pg.locator("#impact-summary")).to_contain_text(f"{len(whole['units'])} units")
    # a window of the first hour of its work only
    first_hour = row["t0"].replace(minute=0, second=0, microsecond=0)
    upto = first_hour + timedelta(hours=1)
    pg.fill("#w-from", first_hour.strftime("%Y-%m-%dT%H:%M"))
    pg.fill("#w-to", upto.strftime("%Y-%m-%dT%H:%M"))
    pg.click("form.window button[type=submit]")
    pg.wait_for_url(lambda url: "from=" in url)
    pg.wait_for_selector("#units-table[data-ready=true]")
    windowed = wb.get(
        "/recall",
        kind="station",
        id=station,
        **{"from": first_hour.strftime("%Y-%m-%dT%H:%M:00Z"), "to": upto.strftime("%Y-%m-%dT%H:%M:00Z")},
    ).json()
    expect(pg.locator("#impact-summary")).to_contain_text(f"{len(windowed['units'])} units")
    assert len(windowed["units"]) < len(whole["units"]), "the window should leave units out"


def test_what_the_workbench_asked_is_in_the_query_audit_log(page: Page, workbench: Workbench) -> None:
    """The pages are API callers like any other: the server's audit log (built as `traceline
    serve` builds it) names who asked for which recall, with their programmes."""
    wb = workbench
    lot, _impact = largest_lot(wb)
    sign_in(page, wb)
    page.fill("#q", lot)
    page.click("#search button[type=submit]")
    expect(page.locator("h1")).to_contain_text(lot)
    deadline = time.monotonic() + 30
    mine: list[dict[str, Any]] = []
    while not mine and time.monotonic() < deadline:
        got = wb.get("/audit", principal="wb-admin", limit=1000)
        assert got.status_code == 200, got.text
        mine = [r for r in got.json()["rows"] if r["path"] == "/recall" and lot in r["params"]]
        time.sleep(0.5)
    assert mine and mine[0]["programs"] == ["*"] and mine[0]["status"] == 200
    assert mine[0]["results"] > 0
    assert wb.get("/audit", token=wb.analyst).status_code == 403  # administrators only
