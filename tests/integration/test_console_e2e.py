"""The web console end to end in headless Chromium (Debian's chromium, driven by Playwright)
against a real `pgshard serve` over the session's 2-shard cluster: log in, see both shards
healthy, look up a key and compare with the ring and with where the row really is, add a
spare shard (its own PostgreSQL primary and replica) through the form and see it listed,
split shard0 into it from the Jobs page (the confirmation says what moves; the ring shows the
moving ranges; the job's row follows it to done; every row then lives where the new ring
says), cancel a merge back out of it (rolled back, ring unchanged), switch the spare's primary
over from its card and see the server refuse a rejoin it cannot do, see the audit entries,
browse tables/users, log in as a viewer who is offered no writes; an accessibility check
(labels, names, contrast, keyboard) on every page. Screenshots of each page go to a temporary
directory that the test prints (PGSHARD_CONSOLE_SHOTS overrides it)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from pgshard.ring.catalog import Catalog
from pgshard.ring.hashing import canonical_key
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

CHROMIUM = "/usr/bin/chromium"
# As root in a sandbox without a GPU or network: the flags the machine notes prescribe.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
ADMIN_PASSWORD = "console-admin-pw"
TABLE = "e2e_items"
KEYS = [11, 4242, 90001, 31337, 777777]
BULK = range(100_000, 100_300)   # more rows, so that the split has some to copy
STEP_MS = 20_000   # any single wait in the browser
JOB_MS = 60_000    # the split job, from the click to done


@pytest.fixture(scope="module")
def spare():
    """A separate PostgreSQL primary and replica for the shard the test adds (the split moves
    rows into it, the switchover changes its primary; the shared cluster's primaries stay)."""
    with temp_cluster(shards=1, replicas=1, shard_prefix="spare") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def served(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; "
                       f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text)")
    cfg = {"proxy": {"database": "app", "pool_size": 4},
           "sidecar": {"host": "127.0.0.1", "admin_password": ADMIN_PASSWORD},
           "users": USERS, "shards": _shards(pg_cluster),
           "tables": [{"name": TABLE, "shard_key": "id"}], "lease_ttl": 2.0}
    # Its own session: no signal meant for the test runner's process group reaches it.
    with ProxyProcess(cfg, preexec_fn=os.setsid) as p:
        with psycopg.connect(p.dsn(), connect_timeout=10, autocommit=True) as conn:
            for k in KEYS:
                conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES (%s, 'e2e')", (k,))
            # One multi-row INSERT: the proxy splits its rows per shard.
            conn.execute(f"INSERT INTO {TABLE} (id, note) VALUES "
                         + ", ".join(f"({k}, 'bulk')" for k in BULK))
        yield p


@pytest.fixture(scope="module")
def shots():
    d = Path(os.environ.get("PGSHARD_CONSOLE_SHOTS")
             or tempfile.mkdtemp(prefix="pgshard-console-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {d}")
    return d


def rows_by_shard(nodes) -> dict[int, str]:
    """Each row's id -> the shard whose primary holds it (a row on two shards fails)."""
    where: dict[int, str] = {}
    for name, node in nodes:
        for line in node.psql(f"SELECT id FROM {TABLE}").split():
            assert int(line) not in where, f"row {line} is on {where[int(line)]} and {name}"
            where[int(line)] = name
    return where


def rest(base: str, method: str, path: str, token: str | None = None, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:   # say which call, for a diagnosable failure
        raise ConnectionError(f"{method} {base}{path}: {exc.reason}") from exc


# ---------------------------------------------------------------------- checks in the page

A11Y_JS = """() => {
  const problems = [];
  const text = (id) => (document.getElementById(id) || {}).textContent || "";
  const accName = (el) => (el.getAttribute("aria-label")
      || (el.getAttribute("aria-labelledby") || "").split(" ").map(text).join(" ")
      || el.textContent || el.getAttribute("title") || "").trim();
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const ok = [...(el.labels || [])].some((l) => l.textContent.trim())
      || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
    if (!ok) problems.push("input without a label: " + el.outerHTML.slice(0, 90));
  }
  for (const el of document.querySelectorAll("button, a[href], [role=button]"))
    if (!accName(el)) problems.push("control without a name: " + el.outerHTML.slice(0, 90));
  for (const el of document.querySelectorAll("img, svg[role=img]"))
    if (!(el.getAttribute("alt") || el.getAttribute("aria-label")))
      problems.push("image without a text alternative: " + el.outerHTML.slice(0, 60));
  if (!document.documentElement.lang) problems.push("the page has no lang");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  if (!document.querySelector("main")) problems.push("no main landmark");
  const parse = (s) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(s); if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { rgb: p.slice(0, 3), a: p.length > 3 ? p[3] : 1 };
  };
  const lum = (c) => {
    const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0.5) return c.rgb;
    }
    return [255, 255, 255];
  };
  let checked = 0;
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest(".sr-only, .skip, svg")) continue;
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const cs = getComputedStyle(el);
    const fg = parse(cs.color).rgb, bg = background(el);
    const l1 = lum(fg), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(cs.fontSize), bold = parseInt(cs.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    checked++;
    if (ratio < need)
      problems.push(`contrast ${ratio.toFixed(2)} < ${need}: <${el.tagName.toLowerCase()}> "${el.textContent.trim().slice(0, 40)}"`);
  }
  if (checked === 0) problems.push("no text was checked for contrast");
  return problems;
}"""


def accessible(page: Page, where: str) -> None:
    problems = page.evaluate(A11Y_JS)
    assert problems == [], f"{where}: {problems}"


def snap(page: Page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def goto(page: Page, title: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name=title, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Sharded tables" if title == "Tables" else title, timeout=STEP_MS)


def login(page: Page, base: str, user: str, password: str) -> None:
    page.goto(base + "/ui/")
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=STEP_MS)


# ---------------------------------------------------------------------- the test

def test_console_end_to_end(served, spare, pg_cluster, shots):
    try:
        run_console_end_to_end(served, spare, pg_cluster, shots)
    except Exception as exc:   # with the server's side of the story
        alive = "running" if served.alive() else f"exited ({served.proc.returncode})"
        raise AssertionError(f"{exc}\n--- pgshard ({alive}) log tail ---\n{served.log()}") \
            from exc


def run_console_end_to_end(served, spare, pg_cluster, shots):
    base = f"http://127.0.0.1:{served.api_port}"
    deadline = time.monotonic() + 20
    while True:   # the sidecar starts just after the proxy's listener
        try:
            rest(base, "GET", "/health")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    where = rows_by_shard([(s.name, s.primary) for s in pg_cluster.shards])
    assert sorted(where) == sorted([*KEYS, *BULK])

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(STEP_MS)
            console_errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            failed: set[tuple[int, str]] = set()
            page.on("response", lambda r: r.status >= 400 and failed.add(
                (r.status, r.url.removeprefix(base).split("?")[0])))
            external: list[str] = []
            page.on("request", lambda r: r.url.startswith(base) or r.url.startswith("data:")
                    or external.append(r.url))

            # -- login (wrong password first), keyboard reachable
            page.goto(base + "/ui/")
            expect(page.get_by_role("heading", name="pgshard console")).to_be_visible()
            # The checker itself finds what it looks for: an unlabelled input, a nameless
            # button, grey-on-white text (coloured through the CSSOM: the page's CSP refuses
            # inline style attributes).
            page.evaluate("""() => { const d = document.createElement('div'); d.id = 'bad';
                d.innerHTML = '<input><button></button><p>faint</p>';
                d.querySelector('p').style.color = '#bbb';
                document.body.appendChild(d); }""")
            found = " ".join(page.evaluate(A11Y_JS))
            assert "input without a label" in found and "control without a name" in found
            assert "contrast" in found and "faint" in found
            page.evaluate("document.getElementById('bad').remove()")
            accessible(page, "login")
            snap(page, shots, "01-login")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == page.get_by_label("User") \
                .get_attribute("id")
            page.keyboard.type("admin")
            page.keyboard.press("Tab")
            page.keyboard.type("wrong-password")
            page.keyboard.press("Enter")
            expect(page.get_by_role("alert")).to_contain_text("wrong password")
            page.get_by_label("Password").fill(ADMIN_PASSWORD)
            page.get_by_label("Password").press("Enter")
            expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            token = page.evaluate(
                "JSON.parse(sessionStorage.getItem('pgshard.console.session')).token")
            assert page.context.cookies() == []   # the token is never a cookie

            # -- overview: both shards healthy, replicas measured, no alerts
            for name in ("shard0", "shard1"):
                card = page.get_by_test_id(f"shard-{name}")
                expect(card.get_by_test_id("shard-health")).to_have_text("healthy")
                expect(card.get_by_role("row", name="replica:0")).to_contain_text("healthy")
            expect(page.get_by_test_id("no-alerts")).to_be_visible()
            expect(page.get_by_test_id("store-health")).to_have_text("sqlite reachable")
            accessible(page, "overview")
            snap(page, shots, "02-overview")

            # -- keyboard navigation: Tab to the Ring link, Enter follows it
            page.locator("body").focus()
            page.evaluate("document.activeElement.blur()")
            ring_link = page.get_by_role("link", name="Ring", exact=True)
            for _ in range(12):
                page.keyboard.press("Tab")
                focused = page.evaluate("[document.activeElement.textContent, "
                                        "getComputedStyle(document.activeElement).outlineStyle]")
                if focused[0] == "Ring":
                    assert focused[1] != "none", "the focused link shows no focus ring"
                    break
            else:
                pytest.fail("Tab never reached the Ring link")
            page.keyboard.press("Enter")
            expect(page.get_by_role("heading", level=1)).to_have_text("Ring")
            assert ring_link.get_attribute("aria-current") == "page"

            # -- ring: look up keys, compare with pgshard.ring and with the rows' shards
            cat_json = rest(base, "GET", "/api/v1/catalog", token)
            catalog = Catalog.from_json({k: cat_json[k] for k in
                                         ("version", "shards", "ring", "tables", "fences")})
            expect(page.locator("svg[role=img] path[data-owner]")).to_have_count(
                len(catalog.ring) + 1)   # one arc per vnode, the first one in two pieces
            for k in KEYS[:3]:
                page.get_by_label("Shard key").fill(str(k))
                page.get_by_label("Key type").select_option("int")
                page.get_by_role("button", name="Look up").click()
                result = page.get_by_test_id("lookup-result")
                expect(result).to_contain_text(f"Key {k} ")
                shown = page.get_by_test_id("lookup-shard").inner_text()
                assert shown == catalog.shard_for_key(canonical_key(k)).name == where[k], k
            page.get_by_label("Shard key").fill("12x")
            page.get_by_role("button", name="Look up").click()
            expect(page.get_by_role("alert")).to_contain_text("not a valid int key")
            page.get_by_label("Shard key").fill(str(KEYS[1]))
            page.get_by_role("button", name="Look up").click()
            expect(page.get_by_test_id("lookup-shard")).to_have_text(where[KEYS[1]])
            accessible(page, "ring")
            snap(page, shots, "03-ring")

            # -- jobs: the server has the jobs API and no job yet
            goto(page, "Jobs")
            expect(page.get_by_text("No jobs.")).to_be_visible()
            assert page.get_by_role("progressbar").count() == 0
            expect(page.get_by_text("No shard owns nothing yet")).to_be_visible()
            expect(page.get_by_role("button", name="Start split…")).to_be_disabled()
            accessible(page, "jobs")
            snap(page, shots, "04-jobs")

            # -- add the spare shard through the form, with its confirmation
            goto(page, "Overview")
            # The server has switchover and failover: offered, confirmed first. Cancelled
            # here (the session's shared cluster keeps its primaries); nothing is sent.
            assert page.get_by_test_id("failover-unavailable").count() == 0
            page.get_by_test_id("shard-shard0").get_by_role(
                "button", name="Switchover shard0").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("None fails")
            expect(dialog.get_by_label("Replica to promote")).to_contain_text("healthy")
            accessible(page, "switchover confirmation")
            snap(page, shots, "05a-switchover-confirm")
            page.keyboard.press("Escape")
            expect(dialog).to_have_count(0)
            spare_desc = spare.describe()["shards"][0]
            page.get_by_label("Name", exact=True).fill("spare")
            page.get_by_label("Primary (postgresql:// URL)").fill(spare_desc["primary"])
            page.get_by_label("Replicas (optional, comma separated)").fill(
                spare_desc["replicas"][0])
            page.get_by_role("button", name="Add shard").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("Otherwise it owns nothing until a rebalance")
            assert page.evaluate("document.activeElement.textContent") == "Cancel"
            accessible(page, "add-shard confirmation")
            snap(page, shots, "05-add-shard-confirm")
            dialog.get_by_role("button", name="Add shard").click()
            expect(page.get_by_test_id("shard-added")).to_contain_text("Added spare")
            # e2e_items holds rows, so the new shard owns no ranges until a rebalance.
            expect(page.get_by_test_id("shard-added")).to_contain_text("owns no ranges")
            card = page.get_by_test_id("shard-spare")
            expect(card.get_by_test_id("shard-health")).to_have_text("healthy")
            expect(card).to_contain_text("0 vnodes")
            expect(page.get_by_role("list", name="Alerts")).to_contain_text(
                "shard spare owns no ranges")
            assert [s["name"] for s in rest(base, "GET", "/api/v1/shards", token)["shards"]] \
                == ["shard0", "shard1", "spare"]
            accessible(page, "overview after adding a shard")
            snap(page, shots, "06-overview-with-spare")

            # -- a split of shard0 into the spare, started and followed on the Jobs page
            on_spare = run_split_from_jobs_page(page, base, token, shots, pg_cluster, spare)

            # -- tables; a change made elsewhere shows up without a reload (polling)
            goto(page, "Tables")
            expect(page.get_by_role("row", name=f"{TABLE} id")).to_be_visible()
            for node in [s.primary for s in pg_cluster.shards] + [spare.shards[0].primary]:
                node.psql("DROP TABLE IF EXISTS live_added; CREATE TABLE live_added (k int)")
            rest(base, "PUT", "/api/v1/tables/live_added", token, {"shard_key": "k"})
            expect(page.get_by_role("row", name="live_added k")).to_be_visible(timeout=4000)
            accessible(page, "tables")
            snap(page, shots, "07-tables")

            # -- users: add a viewer through the form
            goto(page, "Users")
            page.get_by_label("Name", exact=True).fill("e2e-viewer")
            page.get_by_label("Password (8 characters or more)").fill("viewer-password")
            page.get_by_label("Role").select_option("viewer")
            page.get_by_role("button", name="Add user").click()
            expect(page.get_by_role("row", name="e2e-viewer viewer")).to_be_visible()
            accessible(page, "users")
            snap(page, shots, "08-users")

            # -- audit: the shard.add entry, filtered by action
            goto(page, "Audit log")
            page.get_by_label("Action (e.g. shard.add)").fill("shard.add")
            row = page.get_by_test_id("audit-table").get_by_role("row").filter(has_text="spare")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("admin")
            expect(row).to_contain_text("ok")
            expect(row).to_contain_text("201")
            expect(page.get_by_test_id("audit-table")).not_to_contain_text("user.add")
            accessible(page, "audit")
            snap(page, shots, "09-audit")
            page.get_by_label("Action (e.g. shard.add)").fill("job.create")
            rows = page.get_by_test_id("audit-table").get_by_role("row").filter(has_text="spare")
            expect(rows).to_have_count(2)   # the split into it and the merge out of it
            page.get_by_label("Action (e.g. shard.add)").fill("job.cancel")
            row = page.get_by_test_id("audit-table").get_by_role("row").filter(
                has_text="job.cancel")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("ok")

            # -- switchover of the spare from its card; a rejoin the server cannot do is
            # refused and the refusal shown
            run_spare_switchover(page, shots, served, spare, on_spare)

            # -- a viewer: read-only pages, no forms that write
            page.get_by_role("button", name="Log out").click()
            login(page, base, "e2e-viewer", "viewer-password")
            nav = page.get_by_role("navigation")
            expect(nav.get_by_role("link", name="Overview")).to_be_visible()
            assert nav.get_by_role("link", name="Users").count() == 0
            expect(page.get_by_test_id("shard-spare")).to_be_visible()
            assert page.get_by_role("button", name="Add shard").count() == 0
            assert page.get_by_role("button", name="Switchover shard0").count() == 0
            goto(page, "Jobs")
            expect(page.get_by_test_id("jobs-table").get_by_test_id("job-state")).to_have_text(
                ["cancelled", "done"])   # newest first: the merge, then the split
            assert page.get_by_role("heading", name="Start a resharding job").count() == 0
            accessible(page, "jobs as viewer")
            goto(page, "Tables")
            assert page.get_by_role("button", name="Declare table").count() == 0
            accessible(page, "tables as viewer")
            goto(page, "Overview")
            snap(page, shots, "10-overview-viewer")

            # Chromium logs each failed fetch as a console error; those are checked by URL.
            unexpected = [e for e in console_errors if "Failed to load resource" not in e]
            assert unexpected == [], unexpected
            assert failed == {(401, "/api/v1/auth/login"), (400, "/api/v1/ring/lookup"),
                              (422, "/api/v1/shards/spare/rejoin")}, failed
            assert external == [], f"the console fetched from elsewhere: {external}"
        finally:
            browser.close()
    for name in ("01-login", "02-overview", "03-ring", "04-jobs", "05a-switchover-confirm",
                 "06-overview-with-spare", "06a-split-confirm", "06b-job-running",
                 "06b2-ring-during-split", "06b3-job-detail-running", "06c-job-done", "06d-job-detail", "06d2-merge-cancelled", "06e-ring-after-split", "07-tables",
                 "08-users", "09-audit", "09a-switchover-done", "10-overview-viewer"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name


def run_split_from_jobs_page(page: Page, base: str, token: str, shots: Path, pg_cluster,
                             spare) -> list[int]:
    """Split shard0 into the spare through the form; follow the job's row to done; then every
    row lives on the shard the new ring names, and the ring shows the spare's share."""
    goto(page, "Jobs")
    page.get_by_label("Kind").select_option("split")
    page.get_by_label("Source shard").select_option("shard0")
    page.get_by_label("Target shard").select_option("spare")
    page.get_by_role("button", name="Start split…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("move from shard0 to spare")
    expect(dialog).to_contain_text("50.0% of what shard0 owns")
    expect(dialog).to_contain_text("sharded table")
    accessible(page, "split confirmation")
    snap(page, shots, "06a-split-confirm")
    assert rest(base, "GET", "/api/v1/jobs", token)["jobs"] == []   # nothing started yet
    # A lock on the source table holds the job before its copy ends, so that the pages can
    # be seen while it runs; released below.
    holder = psycopg.connect(pg_cluster.shards[0].primary.dsn, connect_timeout=10)
    try:
        holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        dialog.get_by_role("button", name="Start split").click()
        started = page.get_by_test_id("job-started")
        expect(started).to_contain_text("Started job")
        job_id = started.get_by_role("link").inner_text()
        row = page.get_by_test_id(f"job-{job_id}")
        expect(row).to_be_visible()
        expect(row.get_by_role("button", name=f"Cancel job {job_id}")).to_be_visible()
        snap(page, shots, "06b-job-running")
        moves = rest(base, "GET", f"/api/v1/jobs/{job_id}", token)["moves"]

        # The ring highlights the ranges the job moves, each from shard0 to the spare.
        goto(page, "Ring")
        expect(page.get_by_test_id("moving-jobs")).to_contain_text(f"Job {job_id} (split")
        arcs = page.locator("svg[role=img] path.moving")
        expect(arcs).to_have_count(moves)
        assert {(a.get_attribute("data-src"), a.get_attribute("data-dst"))
                for a in arcs.all()} == {("shard0", "spare")}
        accessible(page, "ring during the split")
        snap(page, shots, "06b2-ring-during-split")

        # The job's own page lists the same ranges while it runs.
        page.get_by_test_id("moving-jobs").get_by_role("link", name=job_id).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {job_id}")
        expect(page.get_by_text(f"{moves} moving ranges")).to_be_visible()
        expect(page.locator("ol.phases li[aria-current=step]")).to_have_count(1)
        accessible(page, "job detail during the split")
        snap(page, shots, "06b3-job-detail-running")
        goto(page, "Jobs")
        row = page.get_by_test_id(f"job-{job_id}")
        assert row.get_by_test_id("job-state").inner_text() in ("pending", "running")
    finally:
        holder.rollback()
        holder.close()
    t1 = time.monotonic()
    # The row follows the job by polling; what it showed on the way is kept to compare.
    seen = []
    bar = row.get_by_role("progressbar")
    deadline = time.monotonic() + JOB_MS / 1000
    while time.monotonic() < deadline:
        state = row.get_by_test_id("job-state").inner_text()
        seen.append((state, row.get_by_test_id("job-phase").inner_text(),
                     row.get_by_test_id("job-rows").inner_text()))
        if state in ("done", "failed", "cancelled"):
            break
        page.wait_for_timeout(200)
    job = rest(base, "GET", f"/api/v1/jobs/{job_id}", token)
    steps = [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]
    print(f"split job {job_id} as its row showed it: {steps}; write pause "
          f"{job['write_pause_ms']} ms; held by the lock {t1 - t0:.1f} s, then done after "
          f"{time.monotonic() - t1:.1f} s")
    assert job["state"] == "done", (job, seen)
    expect(row.get_by_test_id("job-state")).to_have_text("done")
    copied, total = job["progress"]["rows_copied"], job["progress"]["rows_total"]
    assert 0 < copied <= total, job   # the total is the server's estimate, raised to copied
    expect(row.get_by_test_id("job-rows")).to_have_text(f"{copied} / {total} rows")
    assert bar.get_attribute("value") == bar.get_attribute("max"), seen
    assert row.get_by_role("button").count() == 0   # nothing to cancel any more
    accessible(page, "jobs after the split")
    snap(page, shots, "06c-job-done")

    # The job's page: every phase passed.
    row.get_by_role("link", name=job_id).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {job_id}")
    phases = page.get_by_role("list", name="Phases").get_by_role("listitem")
    expect(phases).to_have_count(6)
    expect(page.locator("ol.phases li.past")).to_have_count(6)
    expect(page.get_by_test_id("job-detail").get_by_test_id("job-state")).to_have_text("done")
    accessible(page, "job detail")
    snap(page, shots, "06d-job-detail")

    # A merge of the spare back into shard0, held at its copy, cancelled from its row: it
    # is rolled back and the ring stays as the split left it.
    before = rest(base, "GET", "/api/v1/catalog", token)["ring"]
    goto(page, "Jobs")
    page.get_by_label("Kind").select_option("merge")
    page.get_by_label("Source shard").select_option("spare")
    page.get_by_label("Merge into").select_option("shard0")
    page.get_by_role("button", name="Start merge…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("move from spare to shard0 (100.0% of what spare owns)")
    holder = psycopg.connect(spare.shards[0].primary.dsn, connect_timeout=10)
    try:
        holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        dialog.get_by_role("button", name="Start merge").click()
        merge_id = page.get_by_test_id("job-started").get_by_role("link").inner_text()
        assert merge_id != job_id
        mrow = page.get_by_test_id(f"job-{merge_id}")
        mrow.get_by_role("button", name=f"Cancel job {merge_id}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("rolled back")
        dialog.get_by_role("button", name="Cancel the job").click()
        expect(mrow.get_by_test_id("job-state")).to_have_text("cancelling")
        assert mrow.get_by_role("button").count() == 0   # not offered twice
    finally:
        holder.rollback()
        holder.close()
    expect(mrow.get_by_test_id("job-state")).to_have_text("cancelled", timeout=JOB_MS)
    expect(mrow.get_by_test_id("job-rows")).to_contain_text("rolled back")
    snap(page, shots, "06d2-merge-cancelled")
    assert rest(base, "GET", "/api/v1/catalog", token)["ring"] == before

    # Where the rows are now is where the new ring says; the spare holds the copied ones.
    cat_json = rest(base, "GET", "/api/v1/catalog", token)
    catalog = Catalog.from_json({k: cat_json[k] for k in
                                 ("version", "shards", "ring", "tables", "fences")})
    where = rows_by_shard([*((s.name, s.primary) for s in pg_cluster.shards),
                           ("spare", spare.shards[0].primary)])
    assert sorted(where) == sorted([*KEYS, *BULK])
    wrong = {k: s for k, s in where.items()
             if catalog.shard_for_key(canonical_key(k)).name != s}
    assert wrong == {}, wrong
    assert sum(1 for s in where.values() if s == "spare") == copied
    assert cat_json["fences"] == [] and rest(base, "GET", "/api/v1/ring/moves", token) == \
        {"jobs": []}

    goto(page, "Ring")
    vnodes = sum(1 for _, owner in cat_json["ring"] if owner == "spare")
    assert vnodes > 0
    expect(page.get_by_role("row", name="spare").get_by_role("cell").first).to_have_text(
        str(vnodes))
    assert page.get_by_test_id("moving-jobs").count() == 0   # nothing moves any more
    accessible(page, "ring after the split")
    snap(page, shots, "06e-ring-after-split")
    return sorted(k for k, s in where.items() if s == "spare")


def run_spare_switchover(page: Page, shots: Path, served, spare, on_spare: list[int]) -> None:
    goto(page, "Overview")
    card = page.get_by_test_id("shard-spare")
    old = spare.shards[0].primary
    new = spare.shards[0].replicas[0]
    expect(card.get_by_role("row", name="replica:0")).to_contain_text("healthy")
    card.get_by_role("button", name="Switchover spare").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Replica to promote").select_option(f"127.0.0.1:{new.port}")
    dialog.get_by_role("button", name="Switch over").click()
    expect(card.get_by_test_id("ha-result")).to_contain_text(
        f"the primary is now 127.0.0.1:{new.port} (was 127.0.0.1:{old.port})")
    # The old primary is fenced; a rejoin needs the manager's local cluster, which this
    # server does not run: its refusal is shown as the server said it.
    fenced = card.get_by_test_id("fenced-server")
    expect(fenced).to_contain_text(f"127.0.0.1:{old.port}")
    expect(card.get_by_test_id("last-failover")).to_contain_text("Last switchover")
    # The promoted server is seen as a writable primary within a few polls.
    expect(card.get_by_test_id("shard-health")).to_have_text("healthy", timeout=STEP_MS)
    fenced.get_by_role("button", name=f"Rejoin 127.0.0.1:{old.port}").click()
    page.get_by_role("dialog").get_by_role("button", name="Rejoin").click()
    expect(card.get_by_role("alert")).to_contain_text(
        f"(422): 127.0.0.1:{old.port} is not a server of the local cluster")
    accessible(page, "overview after the switchover")
    snap(page, shots, "09a-switchover-done")
    # Reads and writes through the proxy reach the spare's new primary.
    with psycopg.connect(served.dsn(), connect_timeout=10, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == \
            len(KEYS) + len(BULK)
        done = conn.execute(f"UPDATE {TABLE} SET note = 'after switchover' WHERE id = %s",
                            (on_spare[0],))
        assert done.rowcount == 1
    assert new.psql(f"SELECT note FROM {TABLE} WHERE id = {on_spare[0]}").strip() == \
        "after switchover"
