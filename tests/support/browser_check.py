"""What a person sees: load pages in headless Chromium, screenshot them, list headings, charts and console errors.

    python -m tests.support.browser_check URL_OR_FILE... [--out DIR] [--settle SECONDS]

exits 1 when a page fails to load or logs console errors. It drives Debian's `chromium` through the DevTools
protocol over `--remote-debugging-pipe` (JSON messages on file descriptors 3 and 4), so it needs nothing beyond
the standard library: console errors come as typed events (console.error, uncaught exceptions, failed loads)
instead of being guessed from log lines.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from etl.errors import PipelineError

log = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--remote-debugging-pipe")
MAX_SCREENSHOT_HEIGHT = 12_000  # px: a full-page capture taller than this is cut (huge PNGs help nobody)
# [table id, scrollWidth, clientWidth] of each table wider than its box (`.table-wrap`, else its parent), and of
# the page itself ('(page)') when it scrolls sideways: what a reader has to scroll to see
OVERFLOWING_JS = """Array.from(document.querySelectorAll('table')).map(t => {
    const box = t.closest('.table-wrap') || t.parentElement;
    return [t.id, box.scrollWidth, box.clientWidth];
  }).filter(([, content, room]) => content > room).concat(
    document.documentElement.scrollWidth > document.documentElement.clientWidth
      ? [['(page)', document.documentElement.scrollWidth, document.documentElement.clientWidth]] : [])"""
PAGE_INFO_JS = """JSON.stringify({
  title: document.title,
  headings: Array.from(document.querySelectorAll('h1,h2,h3')).map(h => [h.tagName.toLowerCase(), h.id,
                                                                        h.textContent.trim().slice(0, 200)]),
  svg: document.querySelectorAll('svg').length,
  img: document.querySelectorAll('img').length,
  canvas: document.querySelectorAll('canvas').length,
  height: document.documentElement.scrollHeight,
  overflowing: """ + OVERFLOWING_JS + """
})"""


class BrowserCheckError(PipelineError):
    pass


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    url: str
    title: str = ""
    headings: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, id, text)
    charts: int = 0                     # <svg> + <img> + <canvas> elements
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None      # the first screen (window size)
    full_screenshot: Path | None = None  # the whole page (capped at MAX_SCREENSHOT_HEIGHT)
    dom: str = ""
    overflowing: list[tuple[str, int, int]] = field(default_factory=list)  # OVERFLOWING_JS

    @property
    def heading_ids(self) -> set[str]:
        return {i for _, i, _ in self.headings if i}

    @property
    def ok(self) -> bool:
        return not self.console_errors


class Chromium:
    """One headless browser; `check(url)` opens a fresh tab per page."""

    def __init__(self, width: int = 1366, height: int = 900, executable: str | None = None,
                 timeout_s: float = 60.0):
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserCheckError("chromium not installed: apt-get install chromium")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._profile = tempfile.mkdtemp(prefix="etl-chromium-")
        cmd_r, self._cmd_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        # move the child's ends above 9 so the shell's `3<&n 4>&m` cannot clobber one with the other
        cmd_r, resp_w = (_high_fd(fd) for fd in (cmd_r, resp_w))
        # bash (dash only knows fds 0-9) puts our pipe ends on fds 3 (commands in) and 4 (responses out), as the pipe mode expects
        args = [exe, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}"]
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{resp_w}', "chromium", *args],
            pass_fds=(cmd_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        os.close(cmd_r)
        os.close(resp_w)
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    # ---- protocol plumbing -----------------------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())
            del self._stderr[:-50]

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._resp_r, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._replies[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self._events.put(msg)
        with self._cond:  # browser gone: wake up waiters
            self._replies[-1] = {}
            self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        with self._cond:
            self._next_id += 1
            msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserCheckError(f"chromium is not running ({method}): {' | '.join(self._stderr[-5:])}") from None
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while msg_id not in self._replies:
                if -1 in self._replies:
                    raise BrowserCheckError(f"chromium exited during {method}: {' | '.join(self._stderr[-5:])}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserCheckError(f"chromium did not answer {method} within {self.timeout_s:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserCheckError(f"{method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    def _wait_event(self, method: str, session: str, sink: list[dict]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserCheckError(f"page did not finish loading within {self.timeout_s:.0f} s")
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                continue
            sink.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return

    def _drain_events(self, sink: list[dict]) -> None:
        while True:
            try:
                sink.append(self._events.get_nowait())
            except queue.Empty:
                return

    # ---- the check ---------------------------------------------------------------------------------------------
    def check(self, url: str, out_dir: Path | None = None, name: str | None = None,
              settle_s: float = 1.0) -> PageCheck:
        """Load `url`, wait for the load event (+ settle_s for script-rendered pages), then inspect it."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        events: list[dict] = []
        try:
            for method in ("Page.enable", "Runtime.enable", "Log.enable"):
                self.call(method, session=session)
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session)
            nav = self.call("Page.navigate", {"url": url}, session)
            if nav.get("errorText"):
                raise BrowserCheckError(f"could not open {url}: {nav['errorText']}")
            self._wait_event("Page.loadEventFired", session, events)
            time.sleep(settle_s)
            self._drain_events(events)
            info = json.loads(self.call("Runtime.evaluate", {"expression": PAGE_INFO_JS, "returnByValue": True},
                                        session)["result"]["value"])
            dom = self.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                 "returnByValue": True}, session)["result"]["value"]
            page = PageCheck(url=url, title=info["title"], headings=[tuple(h) for h in info["headings"]],
                             charts=info["svg"] + info["img"] + info["canvas"], dom=dom,
                             overflowing=[tuple(o) for o in info["overflowing"]])
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                stem = name or _file_stem(url)
                page.screenshot = out_dir / f"{stem}.png"
                shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
                page.screenshot.write_bytes(base64.b64decode(shot["data"]))
                full_h = min(int(info["height"]), MAX_SCREENSHOT_HEIGHT)
                page.full_screenshot = out_dir / f"{stem}-full.png"
                shot = self.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": self.width, "height": full_h, "scale": 1}}, session)
                page.full_screenshot.write_bytes(base64.b64decode(shot["data"]))
            self._drain_events(events)
            page.console_errors = console_errors(events, session)
            return page
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (BrowserCheckError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        finally:
            os.close(self._cmd_w)
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def console_errors(events: list[dict], session: str) -> list[str]:
    """console.error/assert calls, uncaught exceptions and error log entries (failed loads...) of one page."""
    out = []
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
    return out


def _file_stem(url: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in url.split("://", 1)[-1])
    return "-".join(filter(None, keep.split("-")))[-80:] or "page"


def to_url(target: str) -> str:
    """A URL as is; a local file path becomes a file:// URL."""
    if "://" in target or target.startswith(("about:", "data:")):
        return target
    return Path(target).resolve().as_uri()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.browser_check", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="URL_OR_FILE")
    parser.add_argument("--out", type=Path, default=Path("browser-check"), help="screenshot folder")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after load for JS rendering")
    parser.add_argument("--width", type=int, default=1366)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    failed = 0
    try:
        with Chromium(args.width, args.height) as browser:
            for target in args.targets:
                url = to_url(target)
                try:
                    page = browser.check(url, args.out, settle_s=args.settle)
                except BrowserCheckError as exc:
                    print(f"FAIL {url}: {exc}")
                    failed += 1
                    continue
                status = "OK  " if page.ok else "FAIL"
                failed += not page.ok
                print(f"{status} {url}\n     title: {page.title!r}; {len(page.headings)} headings; "
                      f"{page.charts} charts/images; screenshots: {page.screenshot}, {page.full_screenshot}")
                for err in page.console_errors:
                    print(f"     console error: {err}")
    except BrowserCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
