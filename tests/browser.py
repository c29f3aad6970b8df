"""Headless Chromium for tests, with the network cut off and every request recorded.

    with Browser() as browser:
        browser.open(site / "backprop" / "index.html")   # a path, or a URL (http://127.0.0.1:...)
        browser.run_js("return document.title")
        browser.click("a.md-header__button")
        browser.requests()          # every URL the page asked for, file:// included
        browser.external()          # those that were not for this machine: should be []
        browser.console_errors()    # severe console messages (uncaught errors, failed loads)
        browser.screenshot(path, "article")

It drives the system's Chromium (``/usr/bin/chromium``, or $MATGRAD_CHROMIUM) through its
chromedriver (or $MATGRAD_CHROMEDRIVER) with Selenium; it never downloads a browser.

The network is cut off twice over. Chromium sends everything that is not for this machine to a
proxy on 127.0.0.1 that records the request and refuses it (``external()`` lists these, whatever
asked: the page, a worker, a prefetch), and it resolves no host name but localhost. The DevTools
performance log lists what the page itself requested (``requests()``).

``serve(directory)`` serves a folder on 127.0.0.1, as ``mkdocs serve`` would.

Missing Chromium or chromedriver is an error (CI installs them: .ci/run); set MATGRAD_NO_BROWSER=1
to skip the browser tests on a machine without them (the ``browser`` fixture in conftest.py).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

NO_BROWSER_ENV = "MATGRAD_NO_BROWSER"
# Chromium's own background traffic at start-up (account list, updates, network time, a preconnect
# to the default search engine): not the page's doing, and refused by the proxy like the rest.
BROWSER_OWN_HOSTS = {
    "accounts.google.com",
    "clients2.google.com",
    "update.googleapis.com",
    "content-autofill.googleapis.com",
    "optimizationguide-pa.googleapis.com",
    "safebrowsing.googleapis.com",
    "start.duckduckgo.com",
}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
# chrome: and devtools: are the browser's own pages and resources, built in.
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "chrome-error", "devtools"}


class BrowserUnavailable(RuntimeError):
    """Chromium, chromedriver or Selenium is missing."""


def find_chromium() -> tuple[str, str]:
    """The paths of Chromium and chromedriver; BrowserUnavailable says what to install."""
    chromium = os.environ.get("MATGRAD_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("MATGRAD_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [
        name
        for name, path in (("chromium", chromium), ("chromedriver", driver))
        if not path or not os.access(path, os.X_OK)
    ]
    if missing:
        raise BrowserUnavailable(
            f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver "
            f"(or set {NO_BROWSER_ENV}=1 to skip the browser tests)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        raise BrowserUnavailable('selenium is not installed: pip install -e ".[test]"') from exc
    assert chromium is not None and driver is not None
    return chromium, driver


def is_local(url: str) -> bool:
    """True for a URL that does not leave this machine: file:, data:, blob:, or a loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and (parts.hostname or "") in LOCAL_HOSTS


class _RefusingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy that forwards nothing: it notes each request line and answers 403."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RefuseHandler)

    def note(self, url: str) -> None:
        if urllib.parse.urlsplit(url).hostname not in BROWSER_OWN_HOSTS:
            with self._lock:
                self.seen.append(url)


class _RefuseHandler(socketserver.StreamRequestHandler):
    server: _RefusingProxy

    def handle(self) -> None:
        line = self.rfile.readline(8192).decode("latin-1").strip()  # "CONNECT host:443 HTTP/1.1", "GET http://..."
        if line:
            method, _, rest = line.partition(" ")
            target = rest.rsplit(" ", 1)[0]
            self.server.note(f"https://{target}" if method == "CONNECT" else target)
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class Browser:
    """One headless Chromium with a fresh profile; see the module docstring."""

    def __init__(self, width: int = 1280, height: int = 1000, scale: float = 1.0) -> None:
        chromium, driver_path = find_chromium()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="matgrad-chromium-")
        self._proxy = _RefusingProxy()
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            # Chromium's own background traffic (it would reach the proxy and read as the page's):
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=AutofillServerCommunication,Translate,MediaRouter,OptimizationHints,"
            "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
            "--metrics-recording-only",
            "--no-default-browser-check",
            "--no-pings",
            "--password-store=basic",
            "--hide-scrollbars",
            f"--force-device-scale-factor={scale}",
            "--lang=en-US",
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile}",
            # Everything not for this machine goes to the refusing proxy (loopback bypasses it).
            f"--proxy-server=http://127.0.0.1:{self._proxy.server_address[1]}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        ):
            options.add_argument(flag)
        options.add_experimental_option("prefs", {"signin.allowed": False})  # no account checks at start
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        except Exception:
            self._shutdown_helpers()
            raise
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)
        self._requests: list[str] = []
        self._errors: list[str] = []
        self.driver.get("about:blank")

    # -- pages ----------------------------------------------------------------------------------

    def open(self, target: str | os.PathLike[str], timeout: float = 10.0) -> None:
        """Load a file path or URL, wait until it and its fonts have loaded; forget earlier pages' logs."""
        url = Path(target).resolve().as_uri() if not str(target).startswith(("http:", "https:", "file:")) else target
        self._drain()
        self._requests.clear()
        self._errors.clear()
        self._proxy.seen.clear()
        self.driver.get(str(url))
        deadline = time.monotonic() + timeout
        while self.run_js("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            time.sleep(0.05)
        self.driver.execute_async_script("document.fonts.ready.then(() => arguments[arguments.length - 1]())")

    def run_js(self, script: str, *args: Any) -> Any:
        """Run ``script`` as a function body in the page (``return`` gives the result)."""
        return self.driver.execute_script(script, *args)

    def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def screenshot(
        self,
        path: str | os.PathLike[str],
        css: str | None = None,
        clip: tuple[float, float, float, float] | None = None,
    ) -> Path:
        """A PNG of the window, of the first element matching ``css``, or of the page region
        ``clip`` = (x, y, width, height) in CSS pixels from the top left of the document."""
        from selenium.webdriver.common.by import By

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if clip is not None:
            x, y, width, height = clip
            region = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "clip": region, "captureBeyondViewport": True}
            )
            png = base64.b64decode(shot["data"])
        elif css:
            png = self.driver.find_element(By.CSS_SELECTOR, css).screenshot_as_png
        else:
            png = self.driver.get_screenshot_as_png()
        out.write_bytes(png)
        return out

    # -- what the page did ----------------------------------------------------------------------

    def requests(self) -> list[str]:
        """Every URL the current page requested (documents, scripts, styles, fonts, images, XHR)."""
        self._drain()
        return list(dict.fromkeys(self._requests))

    def external(self) -> list[str]:
        """Requests that tried to leave this machine, from the page or anything it started."""
        self._drain()
        return list(dict.fromkeys([u for u in self._requests if not is_local(u)] + self._proxy.seen))

    def console_errors(self) -> list[str]:
        """Severe console messages of the current page: uncaught exceptions, resources that failed."""
        self._drain()
        return list(self._errors)

    def _drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self._requests.append(message["params"]["request"]["url"])
        self._errors += [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._shutdown_helpers()

    def _shutdown_helpers(self) -> None:
        self._proxy.shutdown()
        self._proxy.server_close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
