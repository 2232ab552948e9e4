"""The /dashboard page in a real headless Chromium driven over the DevTools protocol: after real tool calls it
shows the live tool names, call counts and agents from /dashboard.json, logs no console error (a CSP violation
would be one), and a screenshot is written. Plus the page's HTTP contract: auth, headers, `since`."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.components import missing
from tests.conftest import ServerProcess, start_server
from tests.ops_traffic import CALLED, drive_traffic, start_workspace_server
from tests.test_http_edges import request

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def _chromium() -> str:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    missing("chromium", "chromium")


class Browser:
    """Headless Chromium and one page of it, over the DevTools protocol (one websocket, flat sessions)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1400,1300", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            match = DEVTOOLS.search(line)
            url = match.group(1) if match else None
        assert url, "chromium did not print its DevTools address"
        self._closing = contextlib.ExitStack()
        self.ws = self._closing.enter_context(connect(url, max_size=64 << 20, open_timeout=10))
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=1300,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')} "
                              f"({params['entry'].get('url', '')})")
        return errors

    def close(self) -> None:
        try:
            self._closing.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    _chromium()
    page = Browser(tmp_path / "profile")
    yield page
    page.close()


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_workspace_server(tmp_path_factory.mktemp("dashboard"))
    try:
        drive_traffic(server, rounds=12)
        anyio.run(_generate_in_two_modes, server)
        yield server
    finally:
        server.stop()


async def _generate_in_two_modes(server: ServerProcess) -> None:
    """qe_test_generate in its default mode (static oracle) and in its `observed` mode (the default oracle, which
    falls back to static for an unauthenticated HTTP caller), so its card shows a row per mode."""
    async with Client(server.url) as client:
        for oracle in ("static", None):
            arguments = {"source": "def double(x: int) -> int:\n    return 2 * x\n"}
            if oracle:
                arguments["oracle"] = oracle
            result = await client.call_tool("qe_test_generate", arguments)
            assert not result.is_error, result.content


def _wait_for(browser: Browser, expression: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = browser.evaluate(expression)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_the_page_draws_live_figures_without_console_errors(
    busy_server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    base = busy_server.url.rsplit("/", 1)[0]
    browser.send("Page.navigate", session=True, url=f"{base}/dashboard")
    # Rendered once the first /dashboard.json arrived and a second poll merged its history.
    tools = _wait_for(browser, "[...document.querySelectorAll('.tool')].length >= 3 && "
                               "[...document.querySelectorAll('.tool')].map(t => t.dataset.tool)")
    assert tools and set(CALLED) <= set(tools), tools
    time.sleep(2.5)  # a few more polls (the default interval is 1 s), so `since` requests are exercised too

    _, _, raw = request(busy_server, "GET", "/dashboard.json")
    live = json.loads(raw)
    page = browser.evaluate("""({
        cards: Object.fromEntries([...document.querySelectorAll('.tool')].map(t => [t.dataset.tool, t.innerText])),
        agents: [...document.querySelectorAll('.agent')].map(a => a.dataset.agent),
        p95: document.getElementById('k-p95').textContent,
        rps: document.getElementById('k-rps-sub').textContent,
        errors: document.getElementById('k-err').textContent,
        errorsSub: document.getElementById('k-err-sub').textContent,
        alerts: document.getElementById('alerts').innerText,
        health: document.getElementById('health').textContent,
        points: state.points.length,
        banner: getComputedStyle(document.getElementById('banner')).display,
    })""")
    for row in live["tools"]:
        assert f"{row['callsTotal']} total" in page["cards"][row["tool"]], (row, page["cards"])
    # A tool called in two modes shows each against its own target: qe_test_generate's 500 ms and observed's 20 s.
    [generate] = [row for row in live["tools"] if row["tool"] == "qe_test_generate"]
    assert {mode["mode"] for mode in generate["modes"]} == {"default", "observed"}
    modes = browser.evaluate("""[...document.querySelectorAll('.tool[data-tool="qe_test_generate"] .mode')]
        .map(m => [m.dataset.mode, m.innerText])""")
    assert dict(modes).keys() == {"default", "observed"}, modes
    assert "target 500 ms" in dict(modes)["default"] and "target 20.0 s" in dict(modes)["observed"], modes
    assert page["agents"] == [agent["id"] for agent in live["agents"]] and len(page["agents"]) == 2
    assert re.fullmatch(r"[\d.]+ (ms|µs|s)", page["p95"]), page["p95"]
    assert f"{live['requests']['total']} since start" == page["rps"]
    # The failing calls (a missing report, one in four rounds) are the caller's mistakes: a 0 % server error
    # rate (not a dash), with the caller errors counted beside it.
    assert page["errors"] == "0 %", page["errors"]
    assert re.search(r"[1-9]\d* caller errors in the last minute", page["errorsSub"]), page["errorsSub"]
    assert page["banner"] == "none" and page["points"] >= 2
    # The charts are drawn: the latency canvas holds non-blank pixels.
    drawn = browser.evaluate("""(() => { const c = document.getElementById('c-latency');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()""")
    assert drawn > 1000, drawn

    shot = base64.b64decode(browser.send("Page.captureScreenshot", session=True, format="png",
                                         captureBeyondViewport=True)["data"])
    path = tmp_path / "dashboard.png"
    path.write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000
    print(f"dashboard screenshot: {path}")
    assert browser.console_errors() == []


def test_the_page_and_its_data_need_the_same_token(tmp_path: Path) -> None:
    token = "t" * 32
    tokens = tmp_path / "tokens"
    tokens.write_text(token + "\n")
    tokens.chmod(0o600)
    server = start_server(tmp_path, {"server": {"auth": {"tokensFile": str(tokens)}}})
    try:
        for path in ("/dashboard", "/dashboard.json"):
            assert request(server, "GET", path)[0] == 401
            status, headers, body = request(server, "GET", path, headers={"Authorization": f"Bearer {token}"})
            assert status == 200, body
        status, headers, body = request(server, "GET", "/dashboard", headers={"Authorization": f"Bearer {token}"})
        assert headers["content-type"] == "text/html; charset=utf-8" and body.startswith(b"<!doctype html>")
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
        assert b"http://" not in body and b"https://" not in body  # nothing is loaded from elsewhere
        assert request(server, "POST", "/dashboard", headers={"Authorization": f"Bearer {token}"})[0] == 405
    finally:
        server.stop()


def test_since_returns_only_newer_history_and_rejects_garbage(busy_server: ServerProcess) -> None:
    time.sleep(2.2)  # the server adds a point every second
    _, _, raw = request(busy_server, "GET", "/dashboard.json")
    history = json.loads(raw)["history"]
    assert len(history) >= 2 and all(a["t"] < b["t"] for a, b in zip(history, history[1:], strict=False))
    assert {"t", "p50Ms", "p95Ms", "p99Ms", "perSecond", "errorRate", "tools", "poolHitRate"} <= set(history[-1])
    cut = history[-2]["t"]
    _, _, raw = request(busy_server, "GET", f"/dashboard.json?since={cut}")
    newer = json.loads(raw)["history"]
    assert newer and all(point["t"] > cut for point in newer) and len(newer) < len(history)
    for bad in ("abc", "nan", "inf"):
        status, _, body = request(busy_server, "GET", f"/dashboard.json?since={bad}")
        assert status == 400 and b"Unix time" in body, body
