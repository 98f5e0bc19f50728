"""The live view (issue 11, item 5): the page the controller serves at ``GET /``, opened in
headless Chromium (Debian's package, /usr/bin/chromium), and what it shows read back and
checked against ``GET /state``.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages on fds 3 and 4), Python's standard library only. The page is loaded once and then
read again and again without a reload, so the checks see the page update itself.

- ``test_page_shows_the_state_and_follows_it``: the real :class:`controller.api.Api` over a
  :class:`controller.state.LabState` filled by the test, served on loopback (a few seconds,
  no lab): every field, the changes of a new slot, a server going down, the API going away.
- :func:`check_live_view_during_a_run`, run by ``test_live_view_during_a_run`` in
  tests/test_lab_channels.py on that module's lab (2 MEC servers, 2 UE clients, 6-s slots; one
  lab for both saves a bring-up and a teardown): while the policy runs, what the page shows
  equals the API's state of the same slot, twice (two different slots, no reload).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-proxy-server", "--no-default-browser-check", "--disable-extensions",
                  "--window-size=1280,900"]

# What the page shows per field: decimals (None: text or an integer, compared exactly).
SERVER_DECIMALS = {"reputation": 3, "budget_mhs": 1, "budget_cores": 3, "hashrate_khs": 2}
SLOT_DECIMALS = {"utility": 3, "mining_reward": 3, "revenue": 4, "latency_s": 3, "decision_ms": 2,
                 "slot_to_applied_s": 3}
DASH = "\u2013"


# ------------------------------------------------------------------------------ Chromium
class Chromium:
    """One headless Chromium with a new empty profile in its own temporary folder (also its
    TMPDIR and HOME), driven over the DevTools protocol on a pipe. ``close()`` ends every
    process it started (its own process group) and removes the folder."""

    def __init__(self, binary: str = CHROMIUM, timeout: float = 30.0):
        self.base = Path(tempfile.mkdtemp(prefix="live-view-chromium-"))
        self.profile = self.base / "profile"
        self.profile.mkdir()
        self.timeout = timeout
        self._next = 0
        self._results: dict[int, dict] = {}
        self._cv = threading.Condition()
        self._closed = False
        # two pipes, moved above fd 10 so that placing them on 3 and 4 in the child cannot
        # overwrite one with the other
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, cmd_w, ev_r, ev_w)]
        for fd in (cmd_r, cmd_w, ev_r, ev_w):
            os.close(fd)
        child_in, self._wfd, self._rfd, child_out = hi

        def on_fds_3_and_4():        # in the child, before exec: Chromium reads 3, writes 4
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.log_path = self.base / "chromium.log"
        env = {**os.environ, "TMPDIR": str(self.base), "HOME": str(self.base), "XDG_CONFIG_HOME": str(self.base),
               "XDG_CACHE_HOME": str(self.base)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.base,
                pass_fds=(3, 4), preexec_fn=on_fds_3_and_4, start_new_session=True)
        os.close(child_in)
        os.close(child_out)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = None

    # ---- the protocol ----------------------------------------------------------------------
    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._rfd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cv:
                    self._closed = True
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                data = json.loads(msg)
                if "id" in data:
                    with self._cv:
                        self._results[data["id"]] = data
                        self._cv.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        with self._cv:
            self._next += 1
            mid = self._next
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cv:
            while mid not in self._results:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise RuntimeError(f"Chromium did not answer {method} "
                                       f"({'exited' if self._closed else 'timeout'}); log:\n{self.log_tail()}")
                self._cv.wait(left)
            reply = self._results.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> None:
        """Attach to the browser's page and load ``url`` in it."""
        if self.session is None:
            deadline = time.monotonic() + self.timeout
            while True:
                pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
                if pages:
                    break
                assert time.monotonic() < deadline, "Chromium opened no page"
                time.sleep(0.1)
            self.session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"],
                                                               "flatten": True})["sessionId"]
            self.send("Page.enable", session=self.session)
        nav = self.send("Page.navigate", {"url": url}, session=self.session)
        if nav.get("errorText"):
            raise RuntimeError(f"Chromium could not open {url}: {nav['errorText']}")

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> None:
        import base64
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def pids(self) -> set[int]:
        """Chromium processes of this instance still running (by process group and by profile)."""
        found = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getpgid(p.pid) == self.proc.pid or str(self.profile) in " ".join(p.info["cmdline"] or []):
                    if p.status() != psutil.STATUS_ZOMBIE:
                        found.add(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def close(self) -> None:
        """Browser.close, then SIGKILL to the process group of whatever is left; remove the folder."""
        try:
            if self.proc.poll() is None:
                try:
                    self.timeout = 5.0
                    self.send("Browser.close")
                except Exception:
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.monotonic() + 10
            while True:
                left = self.pids()
                if not left or time.monotonic() > deadline:
                    break
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)     # our own group (start_new_session)
                except ProcessLookupError:
                    pass
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
        finally:
            for fd in (self._wfd, self._rfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def chromium_ready():
    """Debian's Chromium must be installed (scripts/setup.sh installs it): a failure, not a skip."""
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"the live view's test needs Debian's chromium (`make setup` installs it): {e}")
    if out.returncode != 0 or "Chromium" not in out.stdout:
        pytest.fail(f"`{CHROMIUM} --version` failed: {out.stdout}{out.stderr}")


# ------------------------------------------------------------------------------ the page's view
READ_PAGE = r"""(() => {
  if (document.readyState !== "complete" || !document.getElementById("servers")) return null;
  const b = document.body.dataset, out = {slot: b.slot, state_t: b.stateT, updates: Number(b.updates),
    period_ms: Number(b.periodMs), error: b.error, stale: document.body.classList.contains("stale"),
    servers: {}, server_order: [], slots: [], series: {},
    budget_used: document.getElementById("budget-used").textContent};
  for (const tr of document.querySelectorAll("#servers tr[data-server]")) {
    const m = tr.dataset.server, row = {};
    out.server_order.push(m);
    for (const td of tr.querySelectorAll("td[data-field]")) row[td.dataset.field] = td.textContent;
    out.servers[m] = row;
  }
  for (const tr of document.querySelectorAll("#slots tr[data-slot-row]")) {
    const row = {row: tr.dataset.slotRow};
    for (const td of tr.querySelectorAll("td[data-field]")) row[td.dataset.field] = td.textContent;
    out.slots.push(row);
  }
  for (const pl of document.querySelectorAll("#chart polyline[data-series]")) {
    out.series[pl.dataset.series] = {n: Number(pl.dataset.points),
      points: pl.getAttribute("points").trim() ? pl.getAttribute("points").trim().split(/\s+/).length : 0};
  }
  return out;
})()"""


def read_page(browser: Chromium) -> dict:
    return browser.evaluate(READ_PAGE)


def wait_page(browser: Chromium, ok, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        page = read_page(browser)          # None while the page is still loading
        if page is not None and ok(page):
            return page
        assert time.monotonic() < deadline, f"the page never {what}: {json.dumps(page)[:2000]}"
        time.sleep(0.1)


def shown(snap: dict) -> dict:
    """What the page should show for a ``GET /state`` snapshot, as raw values (the miners' head
    and hashrate, which change every monitor poll, are kept apart: see :func:`check_page`)."""
    a = snap["assignment"]
    miners = snap.get("miners") or {}
    cores = miners.get("budgets_cores") or {}
    slots = snap.get("recent_slots") or []
    servers = {}
    for i, m in enumerate(snap["servers"]):
        det = snap["reputation_detail"][m]
        level = a["levels"].get(m) if a else None
        mi = miners.get(m) or {}
        servers[m] = {
            "server": m, "reputation": snap["reputation"][m],
            "tasks": f"{det['tasks']} / {det['failed']}",
            "serving": (a["serve"].get(m) or "idle") if a else DASH,
            "level": DASH if level is None else str(level),
            "budget_mhs": None if level is None else snap["levels_mhs"][level],
            "budget_cores": cores.get(m),
            "blocks": str(int(sum((r.get("blocks") or [])[i] for r in slots if len(r.get("blocks") or []) > i))),
            "mining": "unreachable" if "error" in mi else (DASH if "mining" not in mi else ("yes" if mi["mining"] else "no")),
            "status": "down" if m in snap["down"] else "up",
        }
    rows = []
    for r in reversed(slots):
        rows.append({"row": f"{r['slot']}@{_js_number(r.get('t'))}", "slot": str(r["slot"]), "policy": r.get("policy") or DASH,
                     **{k: r.get(k) for k in SLOT_DECIMALS},
                     "n_served": str(r["n_served"]) if r.get("n_served") is not None else DASH,
                     "blocks": str(int(sum(r.get("blocks") or [])))})
    used = sum(snap["levels_mhs"][k] for k in a["levels"].values()) if a else None
    return {"slot": str(a["slot"]) if a else "none", "servers": servers, "order": list(snap["servers"]),
            "slots": rows, "budget_used": used, "period_ms": period_ms(slots),
            "n_utility": sum(isinstance(r.get("utility"), (int, float)) for r in slots),
            "n_latency": sum(isinstance(r.get("latency_s"), (int, float)) for r in slots)}


def _js_number(x) -> str:
    """``x`` as JavaScript's String() writes it (the shortest round trip, as Python's repr, with
    integral values without ".0" and a missing value as "undefined")."""
    if x is None:
        return "undefined"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def period_ms(slots: list[dict]) -> int:
    """The page's poll period for these slots (the rule of live.html's periodMs)."""
    t = [r["t"] for r in slots if isinstance(r.get("t"), (int, float))]
    d = sorted(b - a for a, b in zip(t, t[1:]) if b > a)
    if not d:
        return 2000
    return max(500, min(2000, math.floor(1000 * d[len(d) // 2] / 3 + 0.5)))


def close_to(text: str, value, decimals: int) -> bool:
    """``text`` is ``value`` shown with ``decimals`` decimals (a dash when there is none)."""
    if value is None:
        return text == DASH
    if not re.fullmatch(r"-?\d+\.\d{%d}" % decimals, text):
        return False
    return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def check_page(page: dict, snap: dict, before: dict | None = None) -> None:
    """Assert that ``page`` shows ``snap``. The miners' head and hashrate move every monitor
    poll: the page's must lie between those of ``before`` and ``snap`` (read either side of it)."""
    want = shown(snap)
    assert page["slot"] == want["slot"], (page["slot"], want["slot"])
    assert page["server_order"] == want["order"], page["server_order"]
    for m, exp in want["servers"].items():
        got = page["servers"][m]
        for field, value in exp.items():
            if field in SERVER_DECIMALS:
                assert close_to(got[field], value, SERVER_DECIMALS[field]), (m, field, got[field], value)
            else:
                assert got[field] == value, (m, field, got[field], value)
        mi_after = (snap.get("miners") or {}).get(m) or {}
        mi_before = ((before or snap).get("miners") or {}).get(m) or {}
        if "head" in mi_after and "head" in mi_before:
            lo, hi = sorted((mi_before["head"], mi_after["head"]))
            assert got["head"].isdigit() and lo <= int(got["head"]) <= hi, (m, got["head"], lo, hi)
        else:
            assert got["head"] in (DASH, str(mi_after.get("head")), str(mi_before.get("head"))), (m, got["head"])
        if "hashrate_hps" in mi_after and "hashrate_hps" in mi_before:
            lo, hi = sorted((mi_before["hashrate_hps"] / 1e3, mi_after["hashrate_hps"] / 1e3))
            assert re.fullmatch(r"\d+\.\d{2}", got["hashrate_khs"]), got["hashrate_khs"]
            assert lo - 0.005 - 1e-9 <= float(got["hashrate_khs"]) <= hi + 0.005 + 1e-9, (m, got["hashrate_khs"], lo, hi)
    assert len(page["slots"]) == len(want["slots"]), (len(page["slots"]), len(want["slots"]))
    for got, exp in zip(page["slots"], want["slots"]):
        for field, value in exp.items():
            if field in SLOT_DECIMALS:
                assert close_to(got[field], value, SLOT_DECIMALS[field]), (exp["slot"], field, got[field], value)
            else:
                assert got[field] == value, (exp["slot"], field, got[field], value)
    assert page["series"]["utility"] == {"n": want["n_utility"], "points": want["n_utility"]}, page["series"]
    assert page["series"]["latency_s"] == {"n": want["n_latency"], "points": want["n_latency"]}, page["series"]
    assert (close_to(page["budget_used"], want["budget_used"], 1) if want["budget_used"] is not None
            else page["budget_used"] == DASH), (page["budget_used"], want["budget_used"])
    assert page["period_ms"] == want["period_ms"], (page["period_ms"], want["period_ms"])
    assert page["error"] == "" and not page["stale"], page["error"]


def stable_key(snap: dict) -> str:
    """Everything the page shows of a snapshot but the miners' head and hashrate."""
    return json.dumps(shown(snap), sort_keys=True)


def match_page(browser: Chromium, get_state, timeout: float, min_slot: int = -1) -> tuple[dict, dict]:
    """Read the page against the API until a read falls inside a quiet spell: ``before`` (a
    ``GET /state``), the page's next update (its own poll, after ``before``), ``after``. When
    before and after show the same, the page's snapshot (taken between them) must show it too.
    Returns (page, after) of the first such read with an assignment slot >= ``min_slot``."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        before = get_state()
        page = wait_page(browser, lambda p: p["state_t"] and float(p["state_t"]) >= round(before["t"], 3),
                         15, "fetched /state again")
        after = get_state()
        a = after["assignment"]
        if (stable_key(before) == stable_key(after) and a is not None and a["slot"] >= min_slot
                and page["slot"] == str(a["slot"])):
            check_page(page, after, before)
            return page, after
        assert time.monotonic() < deadline, (
            f"no quiet read in {tries} tries (slot >= {min_slot}); last page slot {page['slot']}, "
            f"API slot {a and a['slot']}")


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def check_self_contained(html: bytes) -> None:
    """No external resource: no src/href to anything, no CSS url() or @import."""
    text = html.decode()
    assert not re.search(r"""\b(src|href)\s*=""", text, re.I), "the page loads an external resource"
    assert not re.search(r"url\(|@import|<link\b|<iframe\b|<img\b", text, re.I), "the page loads an external resource"
    assert "http://" not in text and "https://" not in text, "the page names an outside address"


# ------------------------------------------------------------------------------ a fake API, no lab
def _fake_lab_state():
    from controller.state import LabState, Report
    st = LabState(["mec1", "mec2", "mec3"], ["ue1", "ue2", "ue3"], [20.0, 40.0, 60.0, 80.0, 100.0], 600.0,
                  window_s=600.0)
    now = time.time()
    for ue, tid in (("ue1", 1), ("ue2", 7)):
        st.add_task(ue, tid, 1.5, 2.0, 1.0)
    a = st.assign(4, {"mec1": "ue2", "mec2": None, "mec3": "ue1"}, {"mec1": 4, "mec2": 0, "mec3": 2})
    st.miners.update({"mec1": {"hashrate_hps": 45678.9, "mining": True, "head": 120},
                      "mec2": {"hashrate_hps": 1234.5, "mining": False, "head": 119},
                      "mec3": {"error": "timed out"},
                      "budgets_cores": {"mec1": 0.13333333, "mec2": 0.02666666, "mec3": 0.08}})
    for i, (lat, ok) in enumerate(((0.6172, True), (0.9, True), (1.3, False))):
        st.add_report(Report("executor", "mec1" if i < 2 else "mec3", "ue1", 100 + i, 1.0, lat, ok, now))
    for k in range(3):
        st.add_slot({"slot": k + 1, "t": now - 30 + 3 * k, "policy": "greedy", "utility": 1.23456 - k,
                     "server_utility": [0.5, 0.2, 0.1], "mining_reward": 2.0 * k, "revenue": 0.00123 * k,
                     "latency_s": 0.5 + 0.3333 * k, "n_served": k, "blocks": [k, 1, 0],
                     "decision_ms": 0.456, "slot_to_applied_s": 0.0789})
    return st, a


@pytest.fixture
def fake_api():
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from controller.api import Api
    from controller.live_view import page

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass

    st, _ = _fake_lab_state()
    server = make_server("127.0.0.1", 0, Api(st, {}, "token", page=page), handler_class=Quiet)
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    try:
        yield st, f"http://127.0.0.1:{server.server_port}", server
    finally:
        server.shutdown()
        server.server_close()
        th.join(5)


def test_page_shows_the_state_and_follows_it(fake_api, tmp_path):
    chromium_ready()
    st, url, server = fake_api
    status, ctype, html = http_get(url + "/")
    assert status == 200 and ctype.startswith("text/html")
    check_self_contained(html)
    before_dirs = set(Path(tempfile.gettempdir()).glob("live-view-chromium-*"))

    def state():
        return json.loads(http_get(url + "/state")[2])

    browser = Chromium()
    try:
        browser.open(url + "/")
        page = wait_page(browser, lambda p: p["updates"] >= 1, 20, "showed a snapshot")
        snap = state()
        check_page(page, snap)
        # the numbers as a person reads them: Υ of mec1 = 2 / (0.6172 + 0.9) = 1.318,
        # mec3 failed its task (T = the window, 600 s): 1 / 600 = 0.002
        assert page["servers"]["mec1"]["reputation"] == "1.318"
        assert page["servers"]["mec3"]["reputation"] == "0.002"
        assert page["servers"]["mec1"]["budget_mhs"] == "100.0" and page["servers"]["mec2"]["budget_mhs"] == "20.0"
        assert page["servers"]["mec2"]["serving"] == "idle" and page["servers"]["mec3"]["serving"] == "ue1"
        assert page["servers"]["mec1"]["blocks"] == "3" and page["servers"]["mec2"]["blocks"] == "3"
        assert page["servers"]["mec1"]["hashrate_khs"] == "45.68" and page["servers"]["mec3"]["mining"] == "unreachable"
        assert [r["slot"] for r in page["slots"]] == ["3", "2", "1"] and page["budget_used"] == "180.0"
        assert page["period_ms"] == 1000                   # slots 3 s apart: polls every second
        browser.screenshot(tmp_path / "live-view-fake.png")
        # a new slot: a decision, a measured slot, a server down; the page follows, no reload
        shown_before = page["updates"]
        st.add_task("ue3", 9, 1.0, 1.0, 2.0)
        st.assign(5, {"mec1": None, "mec2": "ue3", "mec3": None}, {"mec1": 1, "mec2": 3, "mec3": 0})
        st.add_slot({"slot": 4, "t": time.time(), "policy": "greedy", "utility": -0.5, "server_utility": [0, 0, 0],
                     "mining_reward": 0.0, "revenue": 0.0, "latency_s": 2.25, "n_served": 1, "blocks": [0, 2, 0],
                     "decision_ms": 0.1, "slot_to_applied_s": 0.2})
        with st.lock:
            st.down.add("mec3")
            st.miners["budgets_cores"] = {"mec1": 0.0266, "mec2": 0.1066, "mec3": 0.0133}
        page = wait_page(browser, lambda p: p["slot"] == "5", 10, "showed slot 5")
        assert page["updates"] > shown_before
        check_page(page, state())
        assert page["servers"]["mec3"]["status"] == "down" and page["servers"]["mec2"]["serving"] == "ue3"
        assert page["servers"]["mec2"]["blocks"] == "5" and page["slots"][0]["slot"] == "4"
        # the API goes away: the page says so and keeps the last snapshot
        server.shutdown()
        server.server_close()
        page = wait_page(browser, lambda p: p["stale"], 15, "noticed the API was gone")
        assert page["error"] and page["slot"] == "5" and page["servers"]["mec2"]["serving"] == "ue3"
        assert browser.pids(), "no Chromium process while the browser is open?"
    finally:
        browser.close()
    assert not browser.pids(), f"Chromium processes left: {browser.pids()}"
    assert not browser.base.exists()
    assert set(Path(tempfile.gettempdir()).glob("live-view-chromium-*")) == before_dirs


# ------------------------------------------------------------------------------ the live run
#: Slots of the policy run the page is read during: two to measure a slot period, then two
#: different slots matched, with room to spare
POLICY_SLOTS = 8


def check_live_view_during_a_run(lab, tmp_path) -> None:
    """Run the policy for :data:`POLICY_SLOTS` slots on the running ``lab``; while it runs, what
    the page shows equals the API's state of the same slot, twice (two different slots, no
    reload). Called by tests/test_lab_channels.py on its lab (one lab for both: issue 21)."""
    chromium_ready()
    from nodes.api_client import ApiClient
    api = ApiClient(lab.api_url, lab.token)
    status, ctype, html = http_get(lab.api_url + "/")
    assert status == 200 and ctype.startswith("text/html")
    check_self_contained(html)
    before_dirs = set(Path(tempfile.gettempdir()).glob("live-view-chromium-*"))
    slot_s = lab.scn.model.slot_s

    t_start = time.time()
    lab.start_policy(slots=POLICY_SLOTS)
    deadline = time.monotonic() + 6 * slot_s
    # a chart and a measured slot period, of this run's policy (the lab may have run others)
    while sum(r.get("t", 0) >= t_start for r in api.state()["recent_slots"]) < 2:
        assert time.monotonic() < deadline, "the policy measured no two slots"
        time.sleep(0.5)

    browser = Chromium()
    try:
        browser.open(lab.api_url + "/")
        wait_page(browser, lambda p: p["updates"] >= 1, 20, "showed a snapshot")
        page1, snap1 = match_page(browser, api.state, 4 * slot_s)
        first = int(page1["slot"])
        assert len(page1["slots"]) >= 2 and page1["period_ms"] == period_ms(snap1["recent_slots"])
        assert 0 < page1["period_ms"] <= 1000 * slot_s / 2          # at least twice a slot
        assert all(page1["servers"][m]["reputation"] != DASH for m in snap1["servers"])
        browser.screenshot(tmp_path / "live-view-run-1.png")
        # the same page, not reloaded, in a later slot
        page2, snap2 = match_page(browser, api.state, 4 * slot_s, min_slot=first + 1)
        assert int(page2["slot"]) > first and page2["updates"] > page1["updates"]
        assert len(page2["slots"]) > len(page1["slots"]) or page2["slots"][0]["slot"] != page1["slots"][0]["slot"]
        browser.screenshot(tmp_path / "live-view-run-2.png")
        print(f"live view matched the API at slots {first} and {page2['slot']} "
              f"({page2['updates']} page updates, poll every {page2['period_ms']} ms)")
    finally:
        browser.close()
    assert not browser.pids(), f"Chromium processes left: {browser.pids()}"
    assert not browser.base.exists()
    assert set(Path(tempfile.gettempdir()).glob("live-view-chromium-*")) == before_dirs
    rc = lab.policy_proc.handle.wait(POLICY_SLOTS * slot_s + 60)
    assert rc == 0, f"the policy loop exited {rc}"
