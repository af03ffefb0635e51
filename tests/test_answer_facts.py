"""Answers that state the fact: when the right page is the first source, the extractive answer
quotes the sentence that holds what was asked, not the page's title, welcome line or
contents, over the real system (bus, model, Qdrant Edge, pages served on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

from answer_helpers import ask, index_page
from conftest import System
from e2e_helpers import wait_terminal
from pdfgen import make_pdf

from helpline.testing import serve_site

HEADER = "Acme X200 Router - User Manual"

# (title, question as a customer asks it, the fact the answer must state, the page's lines)
CHAPTERS: list[tuple[str, str, str, list[str]]] = [
    (
        "Resetting the router",
        "How long do I need to keep the reset button pressed?",
        "12 seconds",
        [
            "Welcome to the chapter on resetting your router. This chapter explains the",
            "reset button, what a reset erases and when a reset is the right step.",
            "",
            "A factory reset erases every setting, including your wireless networks and",
            "the administrator password. With the router switched on, press and hold the",
            "recessed button on the back panel with a paperclip for 12 seconds, until the",
            "power light blinks amber. Wait two minutes while the router restarts.",
        ],
    ),
    (
        "The guest network",
        "How many devices can join the guest network at the same time?",
        "16 devices",
        [
            "Welcome to the chapter on the guest network. Visitors get internet access",
            "without seeing the computers and printers on your home network.",
            "",
            "Turn the guest network on under Wireless > Guest. It has a name and a",
            "password of its own. At most 16 devices can be connected to the guest",
            "network at once; further devices are refused until one disconnects.",
        ],
    ),
    (
        "Remote administration",
        "Which port do I use to open the admin pages from outside my home?",
        "port 8443",
        [
            "Welcome to the chapter on remote administration. You can manage the router",
            "from outside your home, for example from your office.",
            "",
            "Remote administration is off by default. Once it is on, the admin pages",
            "answer on port 8443 of your public address, over HTTPS only. Choose a",
            "strong administrator password before you turn it on.",
        ],
    ),
    (
        "Status lights",
        "What does it mean when the light on the front flashes blue?",
        "firmware update is being installed",
        [
            "Welcome to the chapter on the status lights. The lights on the front panel",
            "show what the router is doing.",
            "",
            "Steady green: the router is online. Steady amber: no internet connection.",
            "Flashing blue: a firmware update is being installed; do not switch the",
            "router off until the light turns green again.",
        ],
    ),
    (
        "Firmware updates",
        "How often does the router look for new firmware on its own?",
        "every 24 hours",
        [
            "Welcome to the chapter on firmware updates. New firmware fixes problems",
            "and adds features to your router.",
            "",
            "Automatic updates are on by default: the router checks for new firmware",
            "every 24 hours, at 3 a.m. local time, and installs it when no device",
            "has used the network for ten minutes.",
        ],
    ),
]


def manual_pages() -> list[list[str]]:
    """A contents page, then one page per chapter under a running header."""
    contents = [HEADER, "", "Contents"]
    contents += [
        f"{n}. {title} .......... {n + 1}" for n, (title, *_rest) in enumerate(CHAPTERS, 1)
    ]
    pages = [contents]
    for n, (title, _question, _fact, lines) in enumerate(CHAPTERS, 1):
        pages.append([HEADER, "", f"Chapter {n}. {title}", "", *lines, "", f"Page {n + 1}"])
    return pages


async def test_pdf_manual_answers_state_the_fact(system: System, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "manual.pdf").write_bytes(make_pdf(manual_pages(), title=HEADER))
    with serve_site(folder) as site:
        url = f"{site}/manual.pdf"
        await index_page(system, url, "manual")
        first_right = 0
        for page, (_title, question, fact, _lines) in enumerate(CHAPTERS, start=2):
            body = await ask(system, question, "manual", cache=False)
            if body["sources"][0]["url"] != f"{url}#page={page}":
                continue
            first_right += 1
            # The fact comes first: the answer's first quote states it.
            first_quote = body["answer"].split(" [1]")[0]
            assert fact in first_quote, (question, body["answer"])
            assert "Welcome to the chapter" not in first_quote
        # Retrieval finds the chapter's page first for (nearly) every question.
        assert first_right >= len(CHAPTERS) - 1


async def test_the_readme_demo_says_how_long(system: System, docs_site: str) -> None:
    pages = [
        "index.html",
        "getting-started/install.html",
        "config/wifi.html",
        "config/firewall.html",
        "maintenance/firmware.html",
        "troubleshooting/reset.html",
        "troubleshooting/leds.html",
    ]
    response = await system.client.post(
        "/api/v1/scrape/batch",
        json={"urls": [f"{docs_site}/{p}" for p in pages], "brand": "acme"},
    )
    assert response.status_code == 202, response.text
    record = await wait_terminal(system.client, response.json()["task_id"], timeout_s=90)
    assert record["status"] == "succeeded", record
    body = await ask(system, "How long do I hold the reset button?", "acme", cache=False)
    assert body["sources"][0]["url"] == f"{docs_site}/troubleshooting/reset.html"
    assert "for 12 seconds" in body["answer"].split(" [1]")[0], body["answer"]
    assert len(body["answer"]) <= 600
