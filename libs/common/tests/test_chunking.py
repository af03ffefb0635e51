from __future__ import annotations

import hashlib
import itertools

import pytest

from helpline.common.chunking import Block, Document, chunk_document, text_document


def _doc(*blocks: tuple[str, str]) -> Document:
    return Document(
        url="https://help.example/a",
        title="A page",
        blocks=[Block(h, t) for h, t in blocks],
        links=[],
    )


def _sentences(n: int, start: int = 0) -> list[str]:
    return [
        f"Sentence number {i} explains one more detail of the setup."
        for i in range(start, start + n)
    ]


def test_empty_document_has_no_chunks() -> None:
    assert chunk_document(_doc()) == []
    assert chunk_document(_doc(("Heading", "   "))) == []


def test_small_sections_become_one_chunk_each_led_by_their_heading() -> None:
    chunks = chunk_document(
        _doc(
            ("Reset your password", "Open the sign-in page."),
            ("Reset your password", "Choose Forgot password."),
            ("Contact us", "Call us on weekdays."),
        )
    )
    assert [c.text for c in chunks] == [
        "Reset your password\nOpen the sign-in page.\n\nChoose Forgot password.",
        "Contact us\nCall us on weekdays.",
    ]
    assert [c.heading for c in chunks] == ["Reset your password", "Contact us"]
    assert [c.position for c in chunks] == [0, 1]


def test_text_without_a_heading_has_no_heading_line() -> None:
    [chunk] = chunk_document(_doc(("", "Just some text.")))
    assert chunk.text == "Just some text."
    assert chunk.heading == ""


def test_content_hash_is_the_sha256_of_the_text() -> None:
    chunks = chunk_document(_doc(("H", "One."), ("I", "Two.")))
    for chunk in chunks:
        assert chunk.content_hash == hashlib.sha256(chunk.text.encode()).hexdigest()
    assert chunks[0].content_hash != chunks[1].content_hash


def test_paragraphs_are_packed_up_to_max_chars() -> None:
    paragraphs = [" ".join(_sentences(2, start=2 * i)) for i in range(10)]
    chunks = chunk_document(
        _doc(*[("Setup", p) for p in paragraphs]), max_chars=400, overlap_chars=0
    )
    assert len(chunks) > 1
    assert all(len(c.text) <= 400 for c in chunks)
    assert all(c.text.startswith("Setup\n") for c in chunks)
    bodies = [c.text.removeprefix("Setup\n") for c in chunks]
    # Whole paragraphs, in order, nothing lost or repeated when there is no overlap.
    assert [p for b in bodies for p in b.split("\n\n")] == paragraphs
    # Greedy packing: no chunk could have taken the next paragraph too.
    for body, following in itertools.pairwise(bodies):
        first_next = following.split("\n\n")[0]
        assert len("Setup\n") + len(body) + 2 + len(first_next) > 400


def test_long_paragraph_splits_at_sentence_boundaries() -> None:
    sentences = _sentences(30)
    chunks = chunk_document(_doc(("Long", " ".join(sentences))), max_chars=300, overlap_chars=0)
    assert len(chunks) > 1
    assert all(len(c.text) <= 300 for c in chunks)
    for chunk in chunks:
        body = chunk.text.removeprefix("Long\n")
        assert body.startswith("Sentence number ")
        assert body.endswith("setup.")
    joined = " ".join(c.text.removeprefix("Long\n") for c in chunks)
    assert joined == " ".join(sentences)


def test_overlap_carries_the_tail_sentences_into_the_next_chunk() -> None:
    sentences = _sentences(30)
    chunks = chunk_document(_doc(("Long", " ".join(sentences))), max_chars=300, overlap_chars=150)
    assert len(chunks) > 2
    assert all(len(c.text) <= 300 for c in chunks)
    split = [c.text.removeprefix("Long\n").split(". ") for c in chunks]
    for before, after in itertools.pairwise(split):
        previous = [s.removesuffix(".") for s in before]
        current = [s.removesuffix(".") for s in after]
        carried = next(k for k in range(len(current), 0, -1) if previous[-k:] == current[:k])
        overlap = ". ".join(current[:carried]) + "."
        # As many whole tail sentences as fit in overlap_chars: here two of about 57 characters.
        assert len(overlap) <= 150
        assert carried == 2
    text = " ".join(c.text for c in chunks)
    assert all(s in text for s in sentences)


def test_overlap_is_limited_to_overlap_chars() -> None:
    sentences = _sentences(30)
    small = chunk_document(_doc(("Long", " ".join(sentences))), max_chars=300, overlap_chars=40)
    # Each sentence is longer than 40 characters, so none can be carried over.
    assert " ".join(c.text.removeprefix("Long\n") for c in small) == " ".join(sentences)


def test_no_overlap_across_sections() -> None:
    first = " ".join(_sentences(3))
    second = "Completely different topic here."
    chunks = chunk_document(
        _doc(("One", first), ("Two", second)), max_chars=1200, overlap_chars=150
    )
    assert chunks[1].text == "Two\nCompletely different topic here."


def test_overlong_sentence_is_split_at_words() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    chunks = chunk_document(_doc(("", words)), max_chars=100, overlap_chars=0)
    assert all(len(c.text) <= 100 for c in chunks)
    assert " ".join(c.text for c in chunks) == words


def test_list_lines_are_kept_whole_when_a_list_is_split() -> None:
    items = [f"{i}. Step {i} of the procedure, described in some detail." for i in range(1, 21)]
    chunks = chunk_document(_doc(("Steps", "\n".join(items))), max_chars=250, overlap_chars=0)
    assert len(chunks) > 1
    lines = [line for c in chunks for line in c.text.removeprefix("Steps\n").splitlines()]
    assert lines == items


def test_very_long_heading_is_truncated_to_leave_room_for_text() -> None:
    heading = "H" * 500
    [chunk] = chunk_document(_doc((heading, "Body text.")), max_chars=200)
    first_line, body = chunk.text.split("\n", 1)
    assert len(first_line) <= 50
    assert first_line.endswith("…")
    assert body == "Body text."
    assert len(chunk.text) <= 200


def test_chunking_is_deterministic() -> None:
    doc = _doc(*[("S", " ".join(_sentences(5, start=i))) for i in range(6)])
    assert chunk_document(doc, 300, 100) == chunk_document(doc, 300, 100)


@pytest.mark.parametrize(("max_chars", "overlap"), [(0, 0), (100, 100), (100, -1)])
def test_invalid_limits_are_rejected(max_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="max_chars"):
        chunk_document(_doc(("H", "x")), max_chars, overlap)


def test_text_document_splits_paragraphs_and_chunks_them() -> None:
    doc = text_document("First paragraph  here.\n\n\nSecond   one.", url="doc://b/1", title="T")
    assert [b.text for b in doc.blocks] == ["First paragraph here.", "Second one."]
    chunks = chunk_document(doc)
    assert "First paragraph here." in chunks[0].text
    assert chunks[0].content_hash
