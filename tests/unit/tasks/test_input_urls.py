"""Image inputs given as URLs: fetched once through the egress client, with its rules."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from config.errors import InvalidInput
from tasks.jobs.inputs import fetch_url

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, b"x" * 5000)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(url: str, *, allow_private: bool = True, cap: int = 1000) -> bytes:
    return fetch_url(url, "image", cap, allow_private=allow_private, deadline_s=5)


def test_an_image_url_is_fetched(server: str) -> None:
    assert fetch(f"{server}/ok.png") == PNG


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/big.png", "byte limit"), ("/moved", "HTTP 302"), ("/gone", "HTTP 404")],
)
def test_oversized_redirected_or_missing_urls_are_refused(server: str, path: str, reason: str):
    with pytest.raises(InvalidInput, match=reason) as info:
        fetch(f"{server}{path}")
    assert "image" in info.value.fields


def test_private_addresses_and_plain_http_are_refused_by_default(server: str) -> None:
    for url in (f"{server}/ok.png", "https://127.0.0.1/x.png", "https://10.0.0.1/x.png"):
        with pytest.raises(InvalidInput) as info:
            fetch(url, allow_private=False)
        assert "image" in info.value.fields


def test_an_unreachable_url_is_named(server: str) -> None:
    with pytest.raises(InvalidInput, match="could not be fetched") as info:
        fetch("http://127.0.0.1:9/x.png")
    assert "image" in info.value.fields


def test_a_name_lookup_that_hangs_ends_within_the_fetch_deadline() -> None:
    """The lookup is inside the fetch's one deadline: a resolver that never answers (it
    waits on an event no one sets before the fetch has given up) costs the deadline."""
    gave_up = threading.Event()

    def hanging(*args: object, **kwargs: object) -> list:
        gave_up.wait(30)
        return []

    try:
        with pytest.raises(InvalidInput) as exc:
            fetch_url(
                "https://images.example.com/in.png",
                "image",
                1000,
                allow_private=False,
                deadline_s=0.2,
                resolver=hanging,
            )
        assert "took longer than 0.2 s" in str(exc.value.fields["image"])
    finally:
        gave_up.set()


def test_fetch_slots_cap_the_process_and_each_key() -> None:
    from config.errors import KeySlotShareExceeded, TooManyFetches
    from tasks.jobs.inputs import FetchSlots

    slots = FetchSlots(3, share=0.5)  # one key: one of the three
    with slots.held("alice"), slots.held("bob"):
        with pytest.raises(KeySlotShareExceeded), slots.held("alice"):
            pass
        with slots.held("carol"), pytest.raises(TooManyFetches), slots.held("dave"):
            pass
    with slots.held("alice"), slots.held("dave"):  # all given back
        pass
