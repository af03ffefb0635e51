"""Which pages go to the browser, decided without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpline.common.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from helpline.common.guard import AllowList
from helpline.common.messages import RenderMode, utcnow
from helpline.scraper.browser import BrowserOptions, BrowserPool, BrowserUnavailable
from helpline.scraper.extract import parse_html
from helpline.scraper.fetch import FetchResult
from helpline.scraper.render import Renderer, needs_browser, visible_text_length
from helpline.scraper.shells import assess, main_text_chars

TEXT = "Hold the reset button for twelve seconds to restore the factory settings. " * 5
LINK_WORDS = ("products", "guides", "reference", "community", "status", "support", "pricing")


def page(html: str, content_type: str = "text/html") -> FetchResult:
    return FetchResult("https://docs.example.com/a", 200, content_type, html, {}, utcnow())


def test_visible_text_leaves_out_scripts_styles_and_noscript() -> None:
    html = (
        "<html><head><style>p { color: red }</style><script>var x = 'hidden text';</script>"
        "</head><body><noscript>Please enable JavaScript</noscript><p>Seen  here</p>"
        "<template><p>not yet</p></template></body></html>"
    )
    assert visible_text_length(html) == len("Seen here")
    assert visible_text_length("") == 0


def test_a_page_that_declares_its_encoding_is_read() -> None:
    # DocBook's XHTML (the PostgreSQL manual): parsed from a str, the declaration made the
    # old rule read no text at all, so any such page with a script went to the browser.
    xhtml = f'<?xml version="1.0" encoding="UTF-8"?><html><head>{APP}</head><body><p>{TEXT}</p></body></html>'
    assert visible_text_length(xhtml) == len(TEXT.strip())
    assert needs_browser(page(xhtml), RenderMode.AUTO, min_text_chars=200) is False


PORTALS = Path(__file__).resolve().parents[3] / "tests" / "portals"
NAV = (
    '<header class="site-header"><a href="/">Quillon Help Center</a><nav>'
    + " ".join(f'<a href="/{w}.html">{w.title()} and more</a>' for w in LINK_WORDS)
    + "</nav></header>"
)
DIV_NAV = (
    NAV.replace("<header", '<div id="top"')
    .replace("</header>", "</div>")
    .replace("<nav>", '<div class="navbar">')
    .replace("</nav>", "</div>")
)
FOOTER = (
    '<footer class="site-footer"><p>&copy; 2026 Quillon Devices Ltd, 42 Harbour Road, Dublin 2, '
    "Ireland. Our support team answers every day from 8:00 to 20:00 CET.</p></footer>"
)
DIV_FOOTER = FOOTER.replace("<footer", "<div").replace("</footer>", "</div>")
APP = '<script type="module" src="/assets/index.js"></script>'
ANALYTICS = '<script async src="/js/analytics.js"></script>'
ISLAND_TEXT = [f"Step {i}: {TEXT}" for i in range(4)]


def framed(main: str, *, head: str = ANALYTICS, nav: str = NAV, footer: str = FOOTER) -> str:
    return f"<html><head>{head}</head><body>{nav}{main}{footer}</body></html>"


def island(text: list[str]) -> str:
    data = json.dumps({"props": {"pageProps": {"article": {"paragraphs": text}}}})
    return f'<script id="__NEXT_DATA__" type="application/json">{data}</script>'


@pytest.mark.parametrize(
    ("html", "render"),
    [
        # A frame long enough for the old visible-text rule, around a placeholder.
        (framed('<main><h1>Pairing</h1><div class="spinner">Loading…</div></main>', head=APP), True),
        # The same frame as plain divs with class names.
        (framed('<div class="content">Loading…</div>', head=APP, nav=DIV_NAV, footer=DIV_FOOTER), True),
        # Short, but finished: a legal notice; a chapter's table of contents.
        (framed("<main><h1>Privacy</h1><p>We never sell the data you give us.</p></main>"), False),
        (framed('<main><h1>Hash indexes</h1><a href="a.html">Overview</a> <a href="b.html">Implementation</a></main>'), False),
        # A data island holding the text the page does not show yet; shown already (SSR).
        (framed(f"<main><h1>Refunds</h1><p>{TEXT}</p></main>{island(ISLAND_TEXT)}", head=APP), True),
        (framed(f"<main>{''.join(f'<p>{t}</p>' for t in ISLAND_TEXT)}</main>{island(ISLAND_TEXT)}"), False),
        # Search engines' metadata is not a data island.
        (framed(f'<main><p>{TEXT}</p></main><script type="application/ld+json">{json.dumps({"text": ISLAND_TEXT})}</script>'), False),
        # A noscript asking for JavaScript, content behind a frame not marked as one.
        (framed(f"<noscript>Please enable JavaScript.</noscript><div>{TEXT}</div>", nav=DIV_NAV.replace("navbar", "bar")), True),
        # ... but not beside substantial content, nor where the app root was filled on the server.
        (framed(f"<noscript>Please enable JavaScript.</noscript><main>{f'<p>{TEXT}</p>' * 3}</main>"), False),
        (framed(f'<div id="___gatsby"><main><p>{TEXT}</p></main></div><noscript>This app works best with JavaScript enabled.</noscript>'), False),
        # An empty custom element, where an app mounts; an empty app root.
        (framed(f"<my-docs-app></my-docs-app><div>{TEXT}</div>", nav=""), True),
        (framed(f'<main><p>{TEXT}</p></main><div id="root"></div>', head=APP), True),
        # Empty containers in a finished article (comments, a video player) are no sign.
        (framed(f'<main><p>{TEXT}</p><div id="comments"></div></main>'), False),
        # Nothing runs: nothing could fill it in.
        (framed('<main><div id="app"></div></main>', head='<script type="application/json">{}</script>'), False),
    ],
)  # fmt: skip
def test_auto_renders_shells_judged_on_their_main_content(html: str, render: bool) -> None:
    assert needs_browser(page(html), RenderMode.AUTO, min_text_chars=200) is render


def test_main_text_leaves_out_the_frame() -> None:
    html = framed(f"<main><nav>Contents</nav><p>{TEXT}</p></main>", nav=DIV_NAV)
    assert main_text_chars(parse_html(html)) == len(TEXT.strip())


@pytest.mark.parametrize("path", sorted(PORTALS.glob("*.html")), ids=lambda p: p.name)
def test_framework_shells_render_and_server_rendered_pages_do_not(path: Path) -> None:
    html = path.read_text()
    verdict = assess(parse_html(html), 200)
    if path.name.startswith("shell-"):
        # Today's rule (all visible text) would have indexed the placeholder.
        assert visible_text_length(html) >= 200
        assert verdict.render, path.name
        assert verdict.signs, "a shell, not only a short page"
    else:
        assert not verdict.render, verdict.reasons()


@pytest.mark.parametrize(
    ("html", "mode", "content_type", "expected"),
    [
        ('<div id="app"></div><script src="/app.js"></script>', RenderMode.AUTO, "text/html", True),
        (f"<p>{TEXT}</p><script>track()</script>", RenderMode.AUTO, "text/html", False),
        ("<p>Short page, no scripts.</p>", RenderMode.AUTO, "text/html", False),
        ('<div id="app"></div><SCRIPT>go()</SCRIPT>', RenderMode.NEVER, "text/html", False),
        (f"<p>{TEXT}</p>", RenderMode.ALWAYS, "text/html", True),
        (f"<p>{TEXT}</p>", RenderMode.ALWAYS, "application/xhtml+xml", True),
        ("%PDF-1.7 <script>", RenderMode.ALWAYS, "application/pdf", False),
    ],
)
def test_which_pages_need_a_browser(
    html: str, mode: RenderMode, content_type: str, expected: bool
) -> None:
    assert needs_browser(page(html, content_type), mode, min_text_chars=200) is expected


async def test_a_missing_browser_fails_only_pages_that_need_one_and_spares_the_breaker() -> None:
    pool = BrowserPool(AllowList(), BrowserOptions(executable_path="/nonexistent/chromium"))
    breaker = CircuitBreaker("browser", BreakerPolicy(failures=1, open_s=45))
    renderer = Renderer(pool, breaker)
    try:
        plain = page(f"<p>{TEXT}</p><script>1</script>")
        assert await renderer.maybe_render(plain, RenderMode.AUTO) is plain
        thin = page('<div id="app"></div><script>1</script>')
        for _ in range(3):
            with pytest.raises(BrowserUnavailable, match="needs a browser to render it"):
                await renderer.maybe_render(thin, RenderMode.AUTO)
    finally:
        await pool.close()
    assert breaker.state is BreakerState.CLOSED
    assert pool.launches == 0
