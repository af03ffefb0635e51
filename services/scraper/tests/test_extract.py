from __future__ import annotations

import lxml.html
import pytest
import trafilatura.core

from helpline.common.errors import Permanent
from helpline.scraper.extract import Block, _fallback_blocks, _pruned, extract

PAGE_URL = "https://help.acme.example/docs/account/reset.html"

DOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Resetting your password | Acme Help Center</title>
  <meta property="og:title" content="Resetting your password">
  <base href="/docs/account/">
  <script>window.analytics = {track: function () {}};</script>
  <style>.nav { color: red }</style>
</head>
<body>
<div id="cookie-banner" class="cookie-consent">
  We use cookies to improve your experience. <a href="/privacy">Accept all cookies</a>
</div>
<header class="site-header">
  <a href="/">Acme Help Center home</a>
  <nav class="main-nav">
    <ul>
      <li><a href="../billing/">Billing and invoices</a></li>
      <li><a href="../shipping/">Shipping and delivery</a></li>
      <li><a href="security.html#top">Security settings</a></li>
      <li><a href="mailto:support@acme.example">Email us</a></li>
    </ul>
  </nav>
</header>
<aside class="sidebar">
  <h3>Related articles</h3>
  <ul>
    <li><a href="two-factor.html">Set up two-step sign-in</a></li>
    <li><a href="https://help.acme.example/docs/account/security.html">Security settings</a></li>
  </ul>
</aside>
<main>
  <article>
    <h1>Resetting your password</h1>
    <p>If you forgot the password for your Acme account, you can reset it from the sign-in
       page in a few minutes. You will need access to the email address registered on the
       account.</p>
    <h2>Request a reset link</h2>
    <p>Open the sign-in page and choose the link labelled Forgot password. Enter the email
       address you use for Acme and press Send. We send a reset link that stays valid for
       thirty minutes.</p>
    <p>If the message does not arrive within five minutes, look in your spam folder, then
       request a new link. Only the most recent link works.</p>
    <h2>Choose a new password</h2>
    <p>Follow the link in the email and type your new password twice. Passwords need at least
       twelve characters and may not match any of your last five passwords. See the
       <a href="passwords.html">password rules</a> for details.</p>
    <ol>
      <li>Open <b>Settings</b> from the menu in the top right corner of any page.</li>
      <li>Choose Security, then Change password, and confirm with your current one.</li>
    </ol>
    <table>
      <tr><th>Rule</th><th>Value</th></tr>
      <tr><td>Minimum length</td><td>12 characters</td></tr>
    </table>
    <p>Still stuck?
      <a href="//help.acme.example/contact?topic=password#form">Contact support</a>.</p>
  </article>
</main>
<footer class="site-footer">
  <p>Copyright 2025 Acme Corporation. All rights reserved.</p>
  <a href="javascript:void(0)">Back to top</a>
  <a href="/terms?">Terms of service</a>
  <a href="../billing/">Billing</a>
</footer>
</body>
</html>
"""

BOILERPLATE = [
    "We use cookies",
    "Accept all cookies",
    "Acme Help Center home",
    "Billing and invoices",
    "Shipping and delivery",
    "Related articles",
    "two-step sign-in",
    "Copyright 2025",
    "Back to top",
    "Terms of service",
    "window.analytics",
    "color: red",
]


def test_main_text_is_kept_with_its_headings() -> None:
    doc = extract(DOC_PAGE, PAGE_URL)
    assert doc.url == PAGE_URL
    assert doc.title == "Resetting your password | Acme Help Center"
    by_heading = {b.heading: [] for b in doc.blocks}
    for block in doc.blocks:
        by_heading[block.heading].append(block.text)
    assert list(by_heading) == [
        "Resetting your password",
        "Request a reset link",
        "Choose a new password",
    ]
    request = by_heading["Request a reset link"]
    assert request[0].startswith("Open the sign-in page and choose the link labelled")
    assert request[1].endswith("Only the most recent link works.")
    choose = "\n".join(by_heading["Choose a new password"])
    assert "See the password rules for details." in choose
    assert "1. Open Settings from the menu in the top right corner of any page." in choose
    assert "Minimum length | 12 characters" in choose


def test_paragraph_text_is_whitespace_normalised() -> None:
    doc = extract(DOC_PAGE, PAGE_URL)
    assert (
        Block(
            "Resetting your password",
            "If you forgot the password for your Acme account, you can reset it from the sign-in "
            "page in a few minutes. You will need access to the email address registered on the "
            "account.",
        )
        in doc.blocks
    )


@pytest.mark.parametrize("phrase", BOILERPLATE)
def test_boilerplate_is_dropped(phrase: str) -> None:
    assert phrase in DOC_PAGE
    doc = extract(DOC_PAGE, PAGE_URL)
    assert all(phrase not in b.text and phrase not in b.heading for b in doc.blocks)


def test_links_come_from_the_whole_page_resolved_against_base() -> None:
    doc = extract(DOC_PAGE, PAGE_URL.replace("/docs/account/reset.html", "/elsewhere/page"))
    assert doc.links == [
        "https://help.acme.example/privacy",
        "https://help.acme.example/",
        "https://help.acme.example/docs/billing/",
        "https://help.acme.example/docs/shipping/",
        "https://help.acme.example/docs/account/security.html",
        "https://help.acme.example/docs/account/two-factor.html",
        "https://help.acme.example/docs/account/passwords.html",
        "https://help.acme.example/contact?topic=password",
        "https://help.acme.example/terms",
    ]


def test_links_resolve_against_the_page_without_base() -> None:
    html = '<p>See <a href="../faq#q1">the FAQ</a> or <a href="faq">it</a>.</p>'
    doc = extract(html, "http://Example.com:80/docs/guide/start")
    assert doc.links == ["http://example.com/docs/faq", "http://example.com/docs/guide/faq"]


def test_title_falls_back_to_og_title_then_h1() -> None:
    og = '<head><meta property="og:title" content=" Billing  FAQ "></head><body><h1>B</h1></body>'
    assert extract(og, "https://x.example/").title == "Billing FAQ"
    h1 = "<html><body><h1>Shipping <em>times</em></h1><p>Two days.</p></body></html>"
    assert extract(h1, "https://x.example/").title == "Shipping times"
    assert extract("<html><body><p>x</p></body></html>", "https://x.example/").title == ""


def test_small_page_text_is_kept() -> None:
    doc = extract("<html><body>Open <b>Monday</b> to Friday.</body></html>", "https://x.example/")
    assert [b.text for b in doc.blocks] == ["Open Monday to Friday."]


def test_xhtml_with_an_encoding_declaration_parses() -> None:
    html = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Café</title></head>'
        "<body><p>Crème brûlée is on the menu every day.</p></body></html>"
    )
    doc = extract(html, "https://x.example/")
    assert doc.title == "Café"
    assert [b.text for b in doc.blocks] == ["Crème brûlée is on the menu every day."]


@pytest.mark.parametrize("html", ["", "   \n  "])
def test_unparseable_page_is_permanent(html: str) -> None:
    with pytest.raises(Permanent, match="could not parse page"):
        extract(html, "https://x.example/")


def test_fallback_reads_headings_and_paragraphs_minus_boilerplate() -> None:
    root = lxml.html.document_fromstring(
        "<html><body class='cookie-consent-open'>"
        "<div class='cookie-notice'>We use cookies</div>"
        "<header><a href='/'>Home</a></header><nav>Menu</nav>"
        "<h1>Opening hours</h1>We are open <b>daily</b>.<div>From nine<p>to five</p>o'clock</div>"
        "<h2>Holidays</h2><ul><li>Closed on 1 January</li></ul>"
        "<aside>Sidebar</aside><footer>Footer</footer><script>x()</script>"
        "</body></html>"
    )
    assert _fallback_blocks(_pruned(root)) == [
        Block("Opening hours", "We are open daily."),
        Block("Opening hours", "From nine"),
        Block("Opening hours", "to five"),
        Block("Opening hours", "o'clock"),
        Block("Holidays", "Closed on 1 January"),
    ]


def test_article_header_is_kept_but_page_header_is_not() -> None:
    root = lxml.html.document_fromstring(
        "<html><body><header>Site name</header>"
        "<article><header><h1>Returns</h1></header><p>Send it back within 30 days.</p></article>"
        "</body></html>"
    )
    assert _fallback_blocks(_pruned(root)) == [Block("Returns", "Send it back within 30 days.")]


def test_main_text_is_extracted_without_trafilaturas_document_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `trafilatura.extract` hashes the whole text for its own deduplication on every page; that
    # hash is never used here and cost a fifth of an extraction, so it must not be computed.
    def fingerprint(content: str) -> str:
        raise AssertionError("the document fingerprint was computed")

    monkeypatch.setattr(trafilatura.core, "content_fingerprint", fingerprint)
    doc = extract(DOC_PAGE, PAGE_URL)
    assert doc.blocks[0] == Block(
        "Resetting your password",
        "If you forgot the password for your Acme account, you can reset it from the sign-in "
        "page in a few minutes. You will need access to the email address registered on the "
        "account.",
    )
