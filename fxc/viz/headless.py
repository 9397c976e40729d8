"""Headless Chromium from the standard library: the DevTools protocol over a pipe.

    with Chromium() as browser:               # /usr/bin/chromium (or $FXC_CHROMIUM)
        page = browser.open("file:///.../report.html#stage=3")
        page.evaluate("document.querySelectorAll('.node').length")
        page.screenshot("shot.png")
        page.errors                               # console errors and uncaught exceptions
        page.requests                             # every URL the page asked for

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL
byte) on fd 3 and write its answers and events on fd 4: no websocket, no port, no package.
Used by the report's tests and by `fxc dump --screenshot`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

DEFAULT_BINARY = "/usr/bin/chromium"


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium to drive: $FXC_CHROMIUM, /usr/bin/chromium, or one on PATH."""
    for cand in (os.environ.get("FXC_CHROMIUM"), DEFAULT_BINARY):
        if cand and os.access(cand, os.X_OK):
            return cand
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


_MOVE_FDS = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
             "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")


def _high(fd: int) -> int:
    """The same pipe end at fd >= 10: were it 3 or 4 already, moving the other end to 3
    or 4 would overwrite it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chromium:
    def __init__(self, binary: str | None = None, width: int = 1600, height: int = 1000,
                 timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found (install Debian's chromium, or set FXC_CHROMIUM)")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="fxc-chromium-")
        to_browser_r, self._w = map(_high, os.pipe())
        self._r, from_browser_w = map(_high, os.pipe())
        flags = ["--headless", "--remote-debugging-pipe", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to sandbox itself as root
        # A small exec wrapper moves our pipe ends to fds 3 and 4, where Chromium looks for
        # them (dash's redirections take one-digit fds only; preexec_fn is unsafe in threads).
        self.proc = subprocess.Popen([sys.executable, "-c", _MOVE_FDS, str(to_browser_r),
                                      str(from_browser_w), self.binary, *flags, "about:blank"],
                                     pass_fds=(to_browser_r, from_browser_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self._buf, self.events = 0, b"", []

    # -- the protocol --
    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"Chromium is gone{self._stderr_tail()}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str | None, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
            self.events.append(ev)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from Chromium in time{self._stderr_tail()}")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited{self._stderr_tail()}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return ""
        if self.proc.stderr is None:
            return ""
        return ": " + self.proc.stderr.read().decode(errors="replace")[-800:]

    # -- pages --
    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        page.goto(url)
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._r, self._w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def goto(self, url: str) -> None:
        """Navigate and wait for the load event (the report draws synchronously on load).
        A change of the hash alone fires no load event: use `set_hash`."""
        self.browser.send("Page.navigate", {"url": url}, session=self.session)
        self.browser.wait_event("Page.loadEventFired", self.session)

    def set_hash(self, fragment: str) -> None:
        self.evaluate(f"location.hash = {json.dumps(fragment)}")

    def evaluate(self, expression: str):
        res = self.browser.send("Runtime.evaluate", {"expression": expression,
                                                     "returnByValue": True, "awaitPromise": True},
                                session=self.session)
        if "exceptionDetails" in res:
            detail = res["exceptionDetails"]
            text = detail.get("exception", {}).get("description") or detail.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll until `expression` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise BrowserError(f"timed out waiting for {expression!r}")

    def click(self, x: float, y: float) -> None:
        """A real left click at page coordinates (pointer events included)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                           "button": "left", "clickCount": 1},
                              session=self.session)

    def wheel(self, x: float, y: float, delta_y: float) -> None:
        self.browser.send("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": x, "y": y,
                                                       "deltaX": 0, "deltaY": delta_y},
                          session=self.session)

    def type_text(self, text: str) -> None:
        self.browser.send("Input.insertText", {"text": text}, session=self.session)

    def press(self, key: str, code: int) -> None:
        """A key press, e.g. press('Enter', 13)."""
        for kind in ("keyDown", "keyUp"):
            self.browser.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key,
                                                         "windowsVirtualKeyCode": code},
                              session=self.session)

    def screenshot(self, path: str) -> str:
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))
        return path

    def _mine(self):
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries, as text."""
        out = []
        for e in self._mine():
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                text = d.get("exception", {}).get("description") or d.get("text", "")
                out.append("exception: " + text)
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    @property
    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self._mine()
                if e.get("method") == "Network.requestWillBeSent"]
