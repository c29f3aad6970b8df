"""The explorer of a training run: written to a file at the end (``--explore``), served live (``--live``).

    watch = TrainingExplorer(model, x_sample, y_sample, path="run.html", port=0, every=10)
    watch.start()                    # with a port: serves http://127.0.0.1:PORT/ and prints nothing
    for ...: watch.step(loss, logits, yb, epoch)        # after opt.step()
    watch.end_epoch(epoch, loss, train_acc, test_acc)
    watch.finish()                   # writes the file; lets the live page see the end; stops the server
    watch.close()                    # in a finally: stops the server on Ctrl-C too

The server is the standard library's ``ThreadingHTTPServer`` on 127.0.0.1 only. It serves the
page at ``/`` and the training record at ``/state.json?since=ID`` (snapshots newer than ``ID``),
which the page polls from its own origin: no other address is ever involved.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from matgrad.autograd.grad_mode import enable_grad
from matgrad.functional import cross_entropy
from matgrad.tensor import Tensor2D
from matgrad.viz.explorer import TrainingRecord, graph_payload, render_page

__all__ = ["LiveServer", "TrainingExplorer"]

POLL_MS = 500


class LiveServer:
    """Serves ``page`` at ``/`` and ``record`` at ``/state.json`` on 127.0.0.1 (port 0: a free one)."""

    def __init__(self, page: str, record: TrainingRecord, port: int = 0) -> None:
        self.page = page.encode("utf-8")
        self.record = record
        self.final_seen = threading.Event()  # a page has received the record with done=True
        self.last_poll = 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", owner.page)
                elif url.path == "/state.json":
                    query = urllib.parse.parse_qs(url.query)
                    try:
                        since = int(query.get("since", ["-1"])[0])
                    except ValueError:
                        since = -1
                    state = owner.record.to_json(since)
                    owner.last_poll = time.monotonic()
                    body = json.dumps(state, separators=(",", ":"), allow_nan=False).encode("utf-8")
                    self._send(200, "application/json", body)
                    if state["done"]:
                        owner.final_seen.set()
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: training prints its own lines
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="matgrad-live", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def wait_for_final(self, timeout: float) -> bool:
        """Give a page that is polling the chance to see the finished record (at most ``timeout`` s)."""
        if time.monotonic() - self.last_poll > 5.0:  # nobody is watching
            return False
        return self.final_seen.wait(timeout)

    def stop(self) -> None:
        """Stop serving, close the socket and join the server thread (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _sample_loss(model: Any, x: Tensor2D, y: Any) -> Tensor2D:
    x = x.detach()
    x.name = "x"
    with enable_grad():
        loss = cross_entropy(model(x), y)
    loss.name = "loss"
    return loss


class TrainingExplorer:
    """Records a training run for the explorer page; see the module docstring."""

    def __init__(
        self,
        model: Any,
        x_sample: Tensor2D,
        y_sample: Any,
        *,
        path: str | os.PathLike[str] | None = None,
        port: int | None = None,
        every: int = 1,
        title: str = "training",
    ) -> None:
        self.model = model
        self.x_sample = x_sample
        self.y_sample = y_sample
        self.path = path
        self.port = port
        self.title = title
        self.record = TrainingRecord(model, every=every)
        self.server: LiveServer | None = None

    def start(self) -> str | None:
        """Start the live server (when a port was given); returns its address."""
        if self.port is None:
            return None
        payload = graph_payload(_sample_loss(self.model, self.x_sample, self.y_sample), self.model, self.title)
        payload["train"] = self.record.to_json()
        payload["live"] = {"url": "state.json", "interval": POLL_MS}
        self.server = LiveServer(render_page(payload), self.record, self.port)
        return self.server.url

    def step(self, loss: float, logits: Tensor2D | None, targets: Any, epoch: int) -> None:
        """Record one optimiser step: its loss, the batch accuracy, and every N steps a snapshot."""
        acc = None
        if logits is not None:
            preds = [row[0] for row in logits.argmax(axis=1).tolist()]
            labels = (
                [int(v) for row in targets.tolist() for v in row] if isinstance(targets, Tensor2D) else list(targets)
            )
            acc = sum(p == t for p, t in zip(preds, labels)) / max(len(preds), 1)
        self.record.step(loss, acc, epoch)

    def end_epoch(self, epoch: int, loss: float, train_acc: float, test_acc: float) -> None:
        self.record.end_epoch(epoch, loss, train_acc, test_acc)

    def finish(self) -> Path | None:
        """Write the page (with ``path``), mark the record done and stop the server; returns the path."""
        written = None
        if self.path is not None:
            payload = graph_payload(_sample_loss(self.model, self.x_sample, self.y_sample), self.model, self.title)
            self.record.finish()
            payload["train"] = self.record.to_json()
            from matgrad.viz.explorer import Explorer

            written = Explorer(payload).save(self.path)
        self.record.finish()
        if self.server is not None:
            self.server.wait_for_final(2.0)
        self.close()
        return written

    def close(self) -> None:
        """Stop the live server, if any (safe to call more than once)."""
        if self.server is not None:
            self.server.stop()
            self.server = None
