"""The web console: static files (plain ES modules, HTML, CSS) at `/` and `/console/...`.

No key is needed for the files themselves; the page asks for an API key and sends it as a
Bearer header on every `/api/v1` call. Only the files shipped in `static/console` are
served, by name (no path is joined from the request).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from helpline.gateway.errors import NotFound

router = APIRouter(tags=["console"], include_in_schema=False)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@cache
def _files() -> dict[str, tuple[bytes, str]]:
    """Every console file by name, read once: its bytes and content type."""
    root = files("helpline.gateway").joinpath("static/console")
    found: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            found[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return found


def _serve(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        raise NotFound(f"no console file {name!r}")
    body, media_type = found
    # Revalidate each load: a new gateway version's files replace the old at once.
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def index() -> Response:
    """The console's page."""
    return _serve("index.html")


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/")


@router.get("/console/")
async def console_index() -> Response:
    return _serve("index.html")


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    """One of the console's files (its modules and stylesheet)."""
    return _serve(name)
