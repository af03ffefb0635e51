"""The gateway's REST API from the terminal: one httpx client that sends the key, and the
API's refusals as exit codes a script can test.

Exit codes (`ExitCode`), also in `helpline --help` and the README:

```
0  done
1  the task failed, expired or was cancelled; or the gateway could not do it (5xx, 429)
2  bad input: the API refused it (4xx, each field and reason printed), or a usage error
3  the gateway cannot be reached (connection refused, timeout)
4  not allowed: no key, a wrong or revoked key (401), or one without the scope or brand (403)
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from helpline.cli.adminkey import admin_key_path, read_admin_key
from helpline.cli.settings import CliSettings

err = Console(stderr=True, highlight=False, soft_wrap=True)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    NOT_ALLOWED = 4


EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the task failed, expired or was cancelled (or the gateway "
    "answered 5xx or 429); 2 bad input (the API's 4xx, its fields and reasons on stderr); "
    "3 the gateway cannot be reached; 4 not allowed (401/403: no key, a wrong or revoked "
    "key, or one without the scope or brand).\n\nThe gateway is HELPLINE_API_URL (default "
    "http://HELPLINE_HTTP_HOST:HELPLINE_HTTP_PORT, http://127.0.0.1:8080), the key "
    "HELPLINE_API_KEY (default: the admin key `helpline up` keeps in HELPLINE_DATA_DIR)."
)


def fail(code: ExitCode, message: str) -> NoReturn:
    """Say why on stderr, in one line or a few, and exit with `code`."""
    err.print(f"[red]error[/]: {escape(message)}")
    raise typer.Exit(int(code))


class Gateway:
    """The API at `url`, called with `key` (None: no Authorization header)."""

    def __init__(self, url: str, key: str | None, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.key_hint = ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    @classmethod
    def from_settings(cls, settings: CliSettings | None = None) -> Gateway:
        settings = settings or CliSettings()
        if settings.api_key is not None:
            gateway = cls(settings.gateway_url, settings.api_key.get_secret_value())
            gateway.key_hint = "sent the key in HELPLINE_API_KEY"
            return gateway
        key = read_admin_key(settings.data_dir)
        gateway = cls(settings.gateway_url, key)
        path = admin_key_path(settings.data_dir)
        gateway.key_hint = (
            f"sent the admin key in {path}"
            if key
            else f"sent no key: set HELPLINE_API_KEY (there is no {path})"
        )
        return gateway

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body=body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """The answer's JSON (None for an empty one); a refusal exits (`refused`)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, "/api/v1" + path, json=body, params=query or None)
        except httpx.TransportError as exc:
            self.unreachable(exc)
        if response.status_code >= 400:
            self.refused(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            fail(
                ExitCode.UNREACHABLE,
                f"{self.url} answered {response.status_code} without JSON: is "
                "HELPLINE_API_URL a Helpline gateway?",
            )

    def events(self, path: str, body: Any) -> Iterator[tuple[str, Any]]:
        """A POST answered with server-sent events: (event, data) as each arrives."""
        try:
            with self.http.stream("POST", "/api/v1" + path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self.refused(response)
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        event, data = "message", []
        except httpx.TransportError as exc:
            self.unreachable(exc)

    def unreachable(self, exc: httpx.TransportError) -> NoReturn:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer in time ({type(exc).__name__})"
        fail(
            ExitCode.UNREACHABLE,
            f"cannot reach the gateway at {self.url}: {reason} (is `helpline up` running? "
            "HELPLINE_API_URL sets where it is)",
        )

    def refused(self, response: httpx.Response) -> NoReturn:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        message = f"{status} {detail or response.reason_phrase}"
        if isinstance(body, dict):
            for error in body.get("errors") or []:
                field = error.get("field") or "(body)"
                message += f"\n  {field}: {error.get('message')}"
        if status in (401, 403):
            fail(ExitCode.NOT_ALLOWED, f"not allowed: {message} ({self.key_hint})")
        if status == 429 or status >= 500:
            retry = response.headers.get("Retry-After")
            fail(ExitCode.FAILED, message + (f" (retry after {retry} s)" if retry else ""))
        fail(ExitCode.BAD_INPUT, message)
