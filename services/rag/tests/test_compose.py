"""Extractive answers cite the sources they come from."""

from __future__ import annotations

import re

import pytest

from helpline.common.vectors import Hit
from helpline.rag import compose as compose_module
from helpline.rag.compose import ANSWER_LIMIT, NO_ANSWER, compose, sentences


def hit(url: str, score: float, text: str, title: str = "") -> Hit:
    return Hit(
        id=url + str(score), score=score, payload={"url": url, "title": title or url, "text": text}
    )


def test_no_hits_says_so() -> None:
    assert compose("anything", [], 5) == (NO_ANSWER, [])


def test_answer_markers_index_into_sources_and_pages_merge() -> None:
    hits = [
        hit(
            "https://d/reset",
            0.8,
            "Resetting\nHold the reset button for 12 seconds. Then wait.",
            "Reset",
        ),
        hit("https://d/reset", 0.7, "Resetting\nThe power light blinks amber during a reset."),
        hit("https://d/wifi", 0.4, "Wi-Fi\nThe router broadcasts two networks."),
    ]
    answer, sources = compose("How long do I hold the reset button?", hits, top_k=5)
    assert [s.url for s in sources] == ["https://d/reset", "https://d/wifi"]
    assert "Hold the reset button for 12 seconds. [1]" in answer
    for marker in re.findall(r"\[(\d+)\]", answer):
        assert 1 <= int(marker) <= len(sources)
    assert sources[0].title == "Reset"
    assert sources[0].score == 0.8
    assert "12 seconds" in sources[0].snippet


def test_top_k_limits_sources() -> None:
    hits = [hit(f"https://d/{i}", 1 - i / 10, f"Page {i} text about routers.") for i in range(6)]
    _answer, sources = compose("routers", hits, top_k=2)
    assert len(sources) == 2


def test_sentences_drop_the_heading_line() -> None:
    assert sentences("Firewall rules\nRules apply at once. No reboot is needed.") == (
        "Rules apply at once.",
        "No reboot is needed.",
    )


def test_unrelated_pages_are_listed_but_not_quoted() -> None:
    hits = [
        hit("https://d/reset", 0.44, "Hold the reset button for 12 seconds."),
        hit("https://d/firmware", 0.23, "Acme publishes firmware updates every quarter."),
        hit("https://d/leds", 0.40, "The power light blinks during updates."),
    ]
    answer, sources = compose("How long do I hold the reset button?", hits, top_k=5)
    assert [s.url for s in sources] == ["https://d/reset", "https://d/leds", "https://d/firmware"]
    assert answer == "Hold the reset button for 12 seconds. [1]"


def test_the_fact_is_found_past_the_first_passages_and_the_intro() -> None:
    intro = "Resetting\nWelcome to the reset guide. This page explains resetting your router."
    filler = [f"Resetting\nThe router has {n} ports on the back panel." for n in range(2, 6)]
    fact = (
        "Using the reset button\nPress and hold the recessed reset button for 12 seconds, "
        "until the power light blinks amber."
    )
    passages = [intro, *filler, fact]
    hits = [hit("https://d/reset", 0.9 - i / 100, text) for i, text in enumerate(passages)]
    answer, _ = compose("How long do I hold the reset button?", hits, top_k=5)
    assert "for 12 seconds" in answer
    # Its heading comes along as context, once.
    assert answer.count("Using the reset button: Press and hold") == 1


def test_answers_stay_within_the_limit() -> None:
    sentence = "The reset button restores every factory setting of the router in one go. "
    hits = [
        hit(f"https://d/{page}", 0.9 - page / 100 - i / 1000, sentence * 12)
        for page in range(3)
        for i in range(8)
    ]
    answer, sources = compose("What does the reset button restore?", hits, top_k=5)
    assert 0 < len(answer) <= ANSWER_LIMIT
    for marker in re.findall(r"\[(\d+)\]", answer):
        assert 1 <= int(marker) <= len(sources)


def test_a_name_several_sources_agree_on_is_quoted_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two sentences alike in every way but their name; pages 2 and 3 of 4 name the second one.
    hits = [
        hit(
            "https://d/ending",
            0.9,
            "Ending queries\nUse halt_query_one to end a query.\nUse stop_query_two to end a query.",
        ),
        hit("https://d/rights", 0.8, "Rights\nThe stop_query_two function needs superuser rights."),
        hit("https://d/signals", 0.7, "Signals\nSee stop_query_two for the signal it sends."),
        hit("https://d/locks", 0.6, "Locks\nA query waiting on a lock can be ended too."),
    ]
    question = "How do I end a query?"
    answer, _ = compose(question, hits, top_k=5)
    assert answer.startswith("Ending queries: Use stop_query_two to end a query. [1]")
    # Without the agreement bonus the first of the two equals leads.
    monkeypatch.setattr(compose_module, "RECURRING_NAME_WEIGHT", 0.0)
    answer, _ = compose(question, hits, top_k=5)
    assert answer.startswith("Ending queries: Use halt_query_one to end a query. [1]")


def test_near_identical_lines_do_not_fill_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = "\n".join(f"INSERT INTO sales VALUES ('north', 'jan', {n});" for n in range(16))
    fact = "Pivoting\nCall crosstab_rows to turn the sales rows of each region into columns."
    hits = [
        hit("https://d/pivot", 0.9, f"Example data\n{rows}"),
        hit("https://d/pivot", 0.8, fact),
    ]
    question = "How do I turn sales rows into one column per month?"
    answer, _ = compose(question, hits, top_k=5)
    assert "crosstab" in answer
    assert len(answer) <= ANSWER_LIMIT
    # Without the redundancy penalty the example lines crowd it out.
    monkeypatch.setattr(compose_module, "REDUNDANCY_WEIGHT", 0.0)
    answer, _ = compose(question, hits, top_k=5)
    assert "crosstab" not in answer


def test_a_name_every_source_names_is_a_running_header_not_agreement() -> None:
    # Every page of a manual carries its name in a running header ("X200"): that agrees
    # with everything and says nothing of the question, so it earns no agreement bonus.
    def page(n: int, chapter: str, fact: str) -> str:
        return (
            f"Acme X200 Router - User Manual Chapter {n}. {chapter} "
            f"Welcome to the chapter on {chapter.lower()}.\n{fact}"
        )

    hits = [
        hit(
            "https://d/m.pdf#page=2",
            0.9,
            page(2, "The guest network", "At most 16 devices can join the guest network at once."),
        ),
        hit("https://d/m.pdf#page=3", 0.8, page(3, "Parental controls", "Limits apply nightly.")),
        hit("https://d/m.pdf#page=4", 0.7, page(4, "Firmware updates", "Updates install at 3 am.")),
    ]
    assert "X200" not in compose_module.recurring_names(compose_module.merge_pages(hits))
    answer, _ = compose("How many devices can join the guest network at the same time?", hits, 5)
    assert "16 devices" in answer.split(" [1]")[0]
