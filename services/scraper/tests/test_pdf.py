from __future__ import annotations

import pytest

from helpline.common.chunking import chunk_document
from helpline.common.errors import Permanent
from helpline.scraper.pdf import extract_pdf


def _pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, line in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
            f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        stream = f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_pages_keep_their_numbers_and_chunks_never_span_two() -> None:
    doc = extract_pdf(_pdf(["Connect the cable.", "Hold reset for 12 seconds."]), "u")
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "Connect the cable."),
        (2, "Hold reset for 12 seconds."),
    ]
    assert doc.title == "Connect the cable."
    chunks = chunk_document(doc, max_chars=700, overlap_chars=100)
    assert [(c.page, c.text) for c in chunks] == [
        (1, "Connect the cable."),
        (2, "Hold reset for 12 seconds."),
    ]


def test_the_same_text_on_another_page_is_another_chunk() -> None:
    one = chunk_document(extract_pdf(_pdf(["Same text."]), "u"))
    two = chunk_document(extract_pdf(_pdf(["Other.", "Same text."]), "u"))
    assert one[0].text == two[1].text
    assert one[0].content_hash != two[1].content_hash


@pytest.mark.parametrize(
    "body", [b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", b"%PDF-", b""]
)
def test_unreadable_pdfs_are_permanent(body: bytes) -> None:
    with pytest.raises(Permanent, match="PDF"):
        extract_pdf(body, "u")
