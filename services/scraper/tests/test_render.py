"""Which pages go to the browser, decided without one."""

from __future__ import annotations

import pytest

from helpline.common.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from helpline.common.messages import RenderMode, utcnow
from helpline.scraper.browser import BrowserOptions, BrowserPool, BrowserUnavailable
from helpline.scraper.fetch import FetchResult
from helpline.scraper.guard import AllowList
from helpline.scraper.render import Renderer, needs_browser, visible_text_length

TEXT = "Hold the reset button for twelve seconds to restore the factory settings. " * 5


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
