"""The HTTP routes the workbench reads, on the same server as the browser tests (no browser):

* ``/search`` and ``/search/suggest`` answer what the lookup knows (a UII, a bare serial, a lot,
  a supplier lot with or without its supplier, a station, an operator, a bench) and 404 with
  the near misses ``queries.lookup`` gives the other routes;
* ``/passport`` agrees with the backward trace and the raw tables; ``/tree`` has one node per
  unit of the trace it draws;
* the live feed (``/alerts/stream``) sends the backlog, then an alert landed after it opened;
  acknowledgements are the caller's, and need an alert the caller may see;
* every new route refuses anonymous callers, and is fuzzed from its OpenAPI schema: never a 5xx.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.browser.plant import Workbench, largest_lot, nc_event

pytestmark = [pytest.mark.integration, pytest.mark.browser]

NEW_PATHS = ("/search", "/search/suggest", "/passport", "/tree", "/freshness", "/alerts/acks")


def _store(wb: Workbench) -> Any:
    assert wb.server.store is not None
    return wb.server.store


def test_search_resolves_every_kind_and_misses_with_suggestions(workbench: Workbench) -> None:
    wb = workbench
    store = _store(wb)
    uii = store.query("SELECT uii FROM operations WHERE creates_unit ORDER BY uii LIMIT 1")[0]["uii"]
    rec = store.query(
        "SELECT lot_id, supplier_id, supplier_lot FROM material_received ORDER BY lot_id LIMIT 1"
    )[0]
    op = store.query("SELECT station_id, operator_id FROM operations ORDER BY uii LIMIT 1")[0]
    bench = store.query("SELECT bench_id FROM unit_tests LIMIT 1")[0]["bench_id"]
    cases = {
        uii: ("serial", uii),
        uii.split(":", 1)[1]: ("serial", uii),  # a bare serial: every UII that carries it
        rec["lot_id"]: ("lot", rec["lot_id"]),
        f"{rec['supplier_id']}:{rec['supplier_lot']}": (
            "supplier_lot",
            f"{rec['supplier_id']}:{rec['supplier_lot']}",
        ),
        rec["supplier_lot"]: ("supplier_lot", f"{rec['supplier_id']}:{rec['supplier_lot']}"),
        str(op["station_id"]): ("station", str(op["station_id"])),
        str(op["operator_id"]): ("operator", str(op["operator_id"])),
        str(bench): ("bench", str(bench)),
    }
    for q, want in cases.items():
        r = wb.get("/search", q=q)
        assert r.status_code == 200, (q, r.text)
        assert want in [(m["kind"], m["id"]) for m in r.json()["matches"]], (q, r.json())
    # suggestions: units first, every hit starts with what was typed
    prefix = uii[:-2]
    hits = wb.get("/search/suggest", q=prefix).json()
    assert hits and hits[0]["kind"] == "serial"
    assert all(h["id"].lower().startswith(prefix.lower()) or h["kind"] == "serial" for h in hits)
    # a miss: 404, the lookup's own near misses included
    r = wb.get("/search", q=rec["lot_id"] + "Z")
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert f"lot:{rec['lot_id']}" in detail["suggestions"]
    assert set(wb.get("/recall", kind="lot", id=rec["lot_id"] + "Z").json()["detail"]["suggestions"]) <= set(
        detail["suggestions"]
    )
    assert wb.get("/search", q=" ").status_code == 422


def test_passport_and_tree_agree_with_the_traces(workbench: Workbench) -> None:
    wb = workbench
    store = _store(wb)
    lot, impact = largest_lot(wb)
    uii = impact["units"][0]["uii"]
    p = wb.get("/passport", serial=uii).json()
    bt = wb.get("/trace/backward", serial=uii).json()
    assert p["root_uii"] == impact["units"][0]["root_uii"]
    assert p["path"] == impact["units"][0]["path"]
    assert {x["lot_id"] for x in p["lots"] if not x.get("upstream")} == {
        x["lot_id"] for x in bt["lots"] if x["uii"] == uii
    }
    assert len(p["operations"]) == len([o for o in bt["operations"] if o["uii"] == uii])
    n_tests = store.query(
        "SELECT count(DISTINCT event_id) AS n FROM unit_tests WHERE uii = {u:String}", {"u": uii}
    )
    assert len(p["tests"]) == int(n_tests[0]["n"])
    for t in p["tests"]:
        for m in t["measurements"]:
            inside = (m["low_limit"] is None or m["value"] >= m["low_limit"]) and (
                m["high_limit"] is None or m["value"] <= m["high_limit"]
            )
            assert m["passed"] == inside, m
    # the forward tree: one unit node per unit of the recall; the backward tree: per unit of the trace
    tree = wb.get("/tree", kind="lot", id=lot).json()
    unit_nodes = {n["id"] for n in tree["nodes"] if n["id"].startswith("uii:") and "^" not in n["id"]}
    unit_nodes = {n for n in unit_nodes if not n.endswith("$")}
    assert unit_nodes == {f"uii:{u['uii']}" for u in impact["units"]}
    assert len([n for n in tree["nodes"] if n["kind"] == "past"]) == len(impact["past"])
    ids = {n["id"] for n in tree["nodes"]}
    assert all(n["parent"] in ids for n in tree["nodes"] if n["parent"] is not None)
    root = p["root_uii"]
    back = wb.get("/tree", kind="serial", id=root).json()
    bt_root = wb.get("/trace/backward", serial=root).json()
    assert {n["id"][2:] for n in back["nodes"] if n["id"].startswith("u:")} == {
        u["uii"] for u in bt_root["units"]
    }
    assert wb.get("/tree", kind="station", id="x").status_code == 422
    assert wb.get("/passport", serial="NO-SUCH:1").status_code == 404


def _events(wb: Workbench, params: dict[str, Any], out: list[tuple[str, Any]], stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {wb.admin}"}
    with httpx.stream("GET", wb.url + "/alerts/stream", params=params, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                out.append((str(kind), json.loads(line[5:])))
                if kind == "end" or stop.is_set():
                    return


def test_the_feed_pushes_a_new_alert_and_acks_are_the_callers(workbench: Workbench) -> None:
    wb = workbench
    got: list[tuple[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(wb, {"backlog": 500}, got, stop), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any(k == "ready" for k, _ in got) and time.monotonic() < deadline:
        time.sleep(0.1)
    backlog = [d for k, d in got if k == "alert"]
    assert [d for k, d in got if k == "ready"] == [{"backlog": len({d["alert_id"] for d in backlog})}]
    every = {r["alert_id"] for r in wb.get("/alerts", limit=10_000).json()["rows"]}
    versions = int(_store(wb).query("SELECT count() AS n FROM alerts")[0]["n"])
    assert {d["alert_id"] for d in backlog} <= every
    assert len(backlog) == min(versions, 500)  # the versions landed last, oldest first
    assert [d["landed"] for d in backlog] == sorted(d["landed"] for d in backlog)
    if versions <= 500:
        assert {d["alert_id"] for d in backlog} == every
    lot = largest_lot(wb)[0]
    ncr = f"NCR-FEED-{uuid.uuid4().hex[:6].upper()}"
    wb.publish([nc_event(wb, lot, ncr)])
    reader.join(timeout=30)  # the stream ends by itself (about 15 s) after sending what landed
    news = [d for k, d in got if k == "alert" and d["alert_id"] == f"NC_RAISED:{ncr}"]
    if not news:  # landed after this response ended: the next one, resumed, sends it
        after = next(d["after"] for k, d in got if k == "end")
        more: list[tuple[str, Any]] = []
        _events(wb, {"after": after}, more, threading.Event())
        news = [d for k, d in more if k == "alert" and d["alert_id"] == f"NC_RAISED:{ncr}"]
    assert news, "the alert raised while the feed was open never arrived"
    assert news[0]["landed"] and news[0]["ack"] is None
    # acknowledgements: the caller's name; none for an alert outside the caller's programmes
    r = httpx.post(
        wb.url + "/alerts/acks",
        params={"alert_id": f"NC_RAISED:{ncr}", "note": "checked"},
        headers={"Authorization": f"Bearer {wb.admin}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["by"] == "wb-admin", r.text
    other = _store(wb).query(
        "SELECT alert_id FROM alerts WHERE toString(program) != {p:String} LIMIT 1", {"p": wb.analyst_program}
    )
    if other:
        r = httpx.post(
            wb.url + "/alerts/acks",
            params={"alert_id": other[0]["alert_id"]},
            headers={"Authorization": f"Bearer {wb.analyst}"},
            timeout=30,
        )
        assert r.status_code == 404, r.text
        assert wb.get("/alerts/acks", token=wb.analyst, alert_id=other[0]["alert_id"]).json() == []
    assert httpx.post(wb.url + "/alerts/acks", params={"alert_id": "x"}, timeout=30).status_code == 401


def test_new_routes_refuse_anonymous_callers_and_never_fail_on_input(workbench: Workbench) -> None:
    wb = workbench
    paths = httpx.get(wb.url + "/openapi.json", timeout=30).json()["paths"]
    assert set(NEW_PATHS) <= set(paths)
    assert "/" not in paths and "/alerts/stream" not in paths  # a page and a stream, not API documents
    for path in NEW_PATHS:
        r = httpx.get(
            wb.url + path, params={"q": "x", "serial": "a:b", "id": "x", "alert_id": "x"}, timeout=30
        )
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
    schema = schemathesis.openapi.from_url(wb.url + "/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in NEW_PATHS:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {wb.admin}"})
            assert response.status_code < 500, (case.method, case.path, case.query, response.text[:300])

        call()
        checked.append(operation.label)
    assert len(checked) == len(NEW_PATHS) + 1, checked  # /alerts/acks: GET and POST


def test_passport_lists_the_nonconformances_and_alerts_that_touch_the_unit(workbench: Workbench) -> None:
    wb = workbench
    ncs = _store(wb).query(
        "SELECT ncr_id, target_id FROM nonconformances WHERE target_kind = 'LOT' ORDER BY ncr_id"
    )
    for nc in ncs:
        units = [  # the unit consumed the lot, or a lot made from it: its passport names the NC
            u
            for u in wb.get("/recall", kind="lot", id=nc["target_id"]).json()["units"]
            if not any(step.startswith("uii:") for step in u["trace"][:-1])
        ]
        if units:
            break
    else:
        pytest.fail("the plant should have a nonconformance on a lot that reached a unit")
    p = wb.get("/passport", serial=units[-1]["uii"]).json()
    assert nc["ncr_id"] in {n["ncr_id"] for n in p["nonconformances"]}
    for n in p["nonconformances"]:  # a supplier's NC: one of its lots here was received in the window
        if n["target_kind"] == "SUPPLIER" and n["window_start"] and n["window_end"]:
            received = [
                datetime.fromisoformat(x["receipt"]["received_at"])
                for x in p["lots"]
                if x.get("receipt") and x["receipt"]["supplier_id"] == n["target_id"]
            ]
            ws, we = datetime.fromisoformat(n["window_start"]), datetime.fromisoformat(n["window_end"])
            assert any(ws <= t <= we for t in received), (n, received)
    alert_ids = {a["alert_id"] for a in p["alerts"]}
    raised = _store(wb).query(
        "SELECT DISTINCT alert_id FROM alerts WHERE subject_id = {l:String}", {"l": nc["target_id"]}
    )
    assert {r["alert_id"] for r in raised} <= alert_ids
    # a unit that never met that lot (neither itself nor a unit inside it) does not list it
    recalled = wb.get("/recall", kind="lot", id=nc["target_id"]).json()["units"]
    reached = {u["uii"] for u in recalled} | {a for u in recalled for a in u["path"]}
    candidates = _store(wb).query(
        "SELECT uii FROM operations WHERE creates_unit AND NOT has(consumed_lot_ids, {l:String})"
        " ORDER BY uii DESC LIMIT 500",
        {"l": nc["target_id"]},
    )
    other = wb.get("/passport", serial=next(c["uii"] for c in candidates if c["uii"] not in reached)).json()
    assert nc["ncr_id"] not in {n["ncr_id"] for n in other["nonconformances"]} or any(
        x["lot_id"] == nc["target_id"] for x in other["lots"]
    )


def test_a_passport_lists_what_reaches_the_unit_through_a_unit_installed_in_it(workbench: Workbench) -> None:
    """An NC on a board's lot reaches the module and the system the board sits in (a recall of
    the lot names them): their passports list it, through the unit inside that met it."""
    wb = workbench
    ncs = _store(wb).query(
        "SELECT ncr_id, target_id FROM nonconformances WHERE target_kind = 'LOT' ORDER BY ncr_id"
    )
    for nc in ncs:
        recalled = wb.get("/recall", kind="lot", id=nc["target_id"]).json()["units"]
        installed = [u for u in recalled if u["path"]]
        if installed:
            break
    else:
        pytest.fail("the plant should have a nonconformance on a lot used in a unit installed in another")
    board = installed[0]
    for holder in board["path"]:  # its parent, ..., its final system
        p = wb.get("/passport", serial=holder).json()
        got = {n["ncr_id"]: n for n in p["nonconformances"]}
        assert nc["ncr_id"] in got, (holder, sorted(got))
        via = got[nc["ncr_id"]]["via_uii"]
        inside_holder = {u["uii"] for u in recalled if holder in u["path"]}
        assert via in inside_holder or (via is None and holder in {u["uii"] for u in recalled}), (holder, via)
        assert any(c in inside_holder or c in board["path"] for c in p["children"]), p["children"]
    # the board's own passport: the NC is its own (its lot), not through another unit
    own = {n["ncr_id"]: n for n in wb.get("/passport", serial=board["uii"]).json()["nonconformances"]}
    assert own[nc["ncr_id"]]["via_uii"] is None
