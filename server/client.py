"""A small HTTP client of the hub API (standard library only), used by the CLI."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mohlog.errors import MohlogError
from mohlog.settings import hub_url

DEFAULT_HUB = "http://127.0.0.1:7480"
TOKEN_FILES = (Path("/var/lib/mohlog/admin.token"),
               Path.home() / ".local/share/mohlog/admin.token")


class HubError(MohlogError):
    """The hub answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status


def find_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """--token, --token-file, $MOHLOG_TOKEN, $MOHLOG_TOKEN_FILE, then the admin.token files."""
    if token:
        return token
    path = token_file or os.environ.get("MOHLOG_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as err:
            raise HubError(f"cannot read token file {path}: {err}") from err
    if os.environ.get("MOHLOG_TOKEN"):
        return os.environ["MOHLOG_TOKEN"]
    for p in TOKEN_FILES:
        try:
            return p.read_text().strip()
        except OSError:
            continue
    return None


@dataclass
class Client:
    url: str = DEFAULT_HUB
    token: str | None = None
    cafile: str | None = None
    insecure: bool = False
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.url = hub_url(self.url)

    def _ctx(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https"):
            return None
        ctx = ssl.create_default_context(cafile=self.cafile)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def request(self, method: str, path: str, params: Any = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, stream: bool = False) -> Any:
        url = self.url.rstrip("/") + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        hdrs = dict(headers or {})
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx())
        except urllib.error.HTTPError as err:
            raise _hub_error(err) from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            why = repr(err) if isinstance(err, http.client.HTTPException) else err
            raise HubError(f"cannot reach the hub at {self.url}: {why}") from err
        if stream:
            return resp
        with resp:
            data = resp.read()
        try:
            return json.loads(data) if data else None
        except ValueError as err:           # something else answers there (a proxy page)
            raise HubError(f"{self.url} did not answer as a mohlog hub: "
                           f"{data[:80]!r}") from err

    def get(self, path: str, params: Any = None) -> Any:
        return self.request("GET", path, params)

    def post_json(self, path: str, obj: Any) -> Any:
        return self.request("POST", path, body=json.dumps(obj).encode(),
                            headers={"Content-Type": "application/json"})

    def ingest(self, body: bytes, key: str, encoding: str | None = "zstd") -> Any:
        headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": key}
        if encoding:
            headers["Content-Encoding"] = encoding
        return self.request("POST", "/api/v1/logs", body=body, headers=headers)

    def sse(self, path: str, params: Any = None,
            on_event: Callable[[str, dict[str, Any]], None] | None = None
            ) -> Iterator[dict[str, Any]]:
        """The data of a server-sent event stream's unnamed events, opened now (a tail is
        subscribed when this returns); named ones (``event: dropped``) go to ``on_event``
        (name, data). The iterator ends when the hub closes the stream."""
        resp = self.request("GET", path, params, stream=True)

        def events() -> Iterator[dict[str, Any]]:
            name = ""
            with resp:
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if not name or name == "message":
                            yield data
                        elif on_event is not None:
                            on_event(name, data)
                    elif not line:
                        name = ""           # an event ends at a blank line
        return events()


def _hub_error(err: urllib.error.HTTPError) -> HubError:
    try:
        detail = json.loads(err.read() or b"{}").get("error", {})
    except ValueError:
        detail = {}
    msg = detail.pop("message", None) or f"HTTP {err.code}"
    return HubError(f"hub refused ({err.code}): {msg}", err.code, **detail)
