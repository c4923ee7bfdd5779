"""Debian's Chromium, headless, driven over the DevTools protocol (no downloaded browser)."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import aiohttp

from tests.support.stack import free_port

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,900", "--hide-scrollbars"]


class Browser:
    def __init__(self, flags: tuple[str, ...] = ()) -> None:
        """`flags`: more command-line switches (e.g. `--host-resolver-rules=...`)."""
        binary = shutil.which("chromium")
        assert binary, "chromium is missing: deploy/local/stack.sh tools installs it"
        self.port = free_port()
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, *flags, f"--remote-debugging-port={self.port}",
             f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self._profile, ignore_errors=True)


class Page:
    """One tab; `call` sends a DevTools command and returns its result."""

    def __init__(self, browser: Browser, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._browser = browser
        self._ws = ws

    @staticmethod
    async def open(browser: Browser, session: aiohttp.ClientSession, url: str) -> Page:
        async with session.put(f"http://127.0.0.1:{browser.port}/json/new?{url}") as resp:
            target = json.loads(await resp.read())
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(browser, ws)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._browser._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json(timeout=30)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])
