"""Hybrid retrieval with the real model, through the embedder's indexer and rag's answerer,
over both stores: Qdrant Edge and qdrant-client (local mode)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import qdrant_edge as edge
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from helpline.common.breaker import BreakerPolicy, CircuitBreaker
from helpline.common.chunking import Block, Document, chunk_document
from helpline.common.embedding import Embedder
from helpline.common.lexical import tokens
from helpline.common.messages import ChunkBatch, QueryTask
from helpline.common.vectors import (
    EdgeStore,
    MissingSparseVector,
    QdrantServerStore,
    VectorStore,
)
from helpline.embedder.indexing import Indexer
from helpline.rag.retrieval import Answerer

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

REFUND = (
    "Returning a purchase\n"
    "Unhappy with an order? Within thirty days of delivery we reimburse the full price. "
    "Return the parcel unopened and the amount is credited to the original card."
)

PAGES: dict[str, tuple[str, list[str]]] = {
    "/billing/returns.html": ("Returning a purchase", [REFUND]),
    "/sync/attachments.html": (
        "Calendar attachments",
        [
            "Calendar attachments\nFiles attached to calendar events are copied to every "
            "invitee's device. Attachments larger than 20 MB are not copied: the event shows "
            "E-4471 instead, and the organiser should share a link to the file.",
        ],
    ),
    "/errors/overview.html": (
        "Understanding error messages",
        [
            "Error messages\nWhen something fails the app shows an error message with a code "
            "and a short explanation. Most error codes go away after a retry; if an error "
            "persists, write down the code and contact support.",
        ],
    ),
    "/errors/network.html": (
        "Network errors",
        [
            "Network errors\nError codes starting with N mean the device lost its connection. "
            "Check the Wi-Fi, then retry. Persistent network error codes usually point to a "
            "firewall blocking the service.",
        ],
    ),
    "/admin/mail-relay.html": (
        "Mail relay",
        [
            "Mail relay\nOutgoing mail goes through the relay named in the admin console. "
            "Relays that reject internal host names need the announced host name replaced; "
            "that is an advanced setting.",
        ],
    ),
    "/admin/advanced.html": (
        "Advanced settings",
        [
            "Advanced settings\nsync_interval_s: seconds between two synchronisations. "
            "max_upload_mb: largest upload accepted. relay_hostname_override: the name "
            "announced instead of the server's own. theme_accent: colour of buttons.",
        ],
    ),
    "/admin/mail-delivery.html": (
        "Mail delivery problems",
        [
            "Mail delivery\nIf outgoing mail is rejected by your mail server, check the relay "
            "host, the port and the credentials in the admin console, and look at the "
            "delivery log for the server's answer.",
        ],
    ),
    "/account/password.html": (
        "Resetting a password",
        [
            f"Resetting a password\nStep {n}: the password reset link is sent by email and "
            f"expires after an hour; request a new password reset link if it expired ({n})."
            for n in range(1, 11)
        ],
    ),
    "/account/password-policy.html": (
        "Password rules",
        [
            "Password rules\nA password needs at least twelve characters. Reset links and "
            "password changes follow the same rules.",
        ],
    ),
}

#: Another brand with one page of the same words, which acme's questions must never reach.
GLOBEX_PAGE = (
    "/sync/attachments.html",
    "Calendar attachments",
    [
        "Calendar attachments\nAttachments larger than 20 MB show E-4471; share a link instead. "
        "The option relay_hostname_override does not exist in Globex."
    ],
)


def batch(brand: str, path: str, title: str, paragraphs: list[str]) -> ChunkBatch:
    blocks = [Block(p.split("\n", 1)[0], p.split("\n", 1)[1]) for p in paragraphs]
    url = f"https://{brand}.example{path}"
    chunks = chunk_document(Document(url=url, title=title, blocks=blocks, links=[]))
    return ChunkBatch(
        task_id=f"{brand}{path}",
        url=url,
        title=title,
        brand=brand,
        chunks=chunks,
        fetched_at=datetime.now(UTC),
        report_task_id=f"{brand}{path}",
    )


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request: pytest.FixtureRequest, tmp_path: Path, model: Embedder) -> Iterator[VectorStore]:
    opened: VectorStore
    if request.param == "edge":
        opened = EdgeStore(tmp_path / "edge", model.dim)
    else:
        opened = QdrantServerStore(QdrantClient(location=":memory:"), "hybrid", model.dim)
    opened.ensure_collection()
    yield opened
    opened.close()


@pytest.fixture
async def answerer(store: VectorStore, model: Embedder) -> Answerer:
    breaker = CircuitBreaker("vector-store", BreakerPolicy())
    indexer = Indexer(store, model, breaker)
    for path, (title, paragraphs) in PAGES.items():
        await indexer.index(batch("acme", path, title, paragraphs))
    await indexer.index(batch("globex", *GLOBEX_PAGE))
    return Answerer(store, model, breaker)


def ask(question: str, brand: str | None = "acme", top_k: int = 3) -> QueryTask:
    return QueryTask(task_id="q", question=question, brand=brand, top_k=top_k)


async def test_a_question_sharing_no_word_with_its_page_finds_it(answerer: Answerer) -> None:
    question = "How do I get my money back?"
    assert not set(tokens(question)) & set(tokens(REFUND))
    answer = await answerer.answer(ask(question))
    assert answer.sources[0].url == "https://acme.example/billing/returns.html"


async def test_an_exact_error_code_finds_its_page_where_dense_alone_does_not(
    answerer: Answerer, model: Embedder
) -> None:
    question = "E-4471"
    target = "https://acme.example/sync/attachments.html"
    dense = answerer.store.search(model.embed([question])[0], 3, "acme")
    assert dense[0].payload["url"] != target
    answer = await answerer.answer(ask(question))
    assert answer.sources[0].url == target
    assert "E-4471" in answer.answer


async def test_an_option_name_finds_its_page_where_dense_alone_does_not(
    answerer: Answerer, model: Embedder
) -> None:
    question = "relay_hostname_override"
    target = "https://acme.example/admin/advanced.html"
    dense = answerer.store.search(model.embed([question])[0], 3, "acme")
    assert dense[0].payload["url"] != target
    answer = await answerer.answer(ask(question))
    assert answer.sources[0].url == target


async def test_the_brand_filter_never_returns_another_brands_chunk(answerer: Answerer) -> None:
    questions = ["E-4471", "calendar attachments too large", "relay_hostname_override", "Globex"]
    for question in questions:
        for brand in ("acme", "globex"):
            hits = await answerer.retrieve(question, 5, brand)
            assert hits
            assert {h.payload["brand"] for h in hits} == {brand}
            assert all(h.payload["url"].startswith(f"https://{brand}.") for h in hits)
    everyone = await answerer.retrieve("E-4471 calendar attachments", 5, None)
    assert {h.payload["brand"] for h in everyone} == {"acme", "globex"}


async def test_one_long_page_does_not_fill_every_source(answerer: Answerer) -> None:
    answer = await answerer.answer(ask("password reset link", top_k=2))
    urls = [s.url for s in answer.sources]
    assert urls[0] == "https://acme.example/account/password.html"
    assert len(urls) == 2
    assert len(set(urls)) == 2


def test_an_edge_index_without_a_sparse_vector_asks_for_a_reindex(tmp_path: Path) -> None:
    old = edge.EdgeShard.create(
        str(tmp_path / "old"),
        edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=4, distance=edge.Distance.Cosine)),
    )
    old.close()
    with pytest.raises(MissingSparseVector, match="crawl again"):
        EdgeStore(tmp_path / "old", 4)


def test_a_server_collection_without_a_sparse_vector_asks_for_a_reindex() -> None:
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "old", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE)
    )
    store = QdrantServerStore(client, "old", 4)
    with pytest.raises(MissingSparseVector, match="crawl again"):
        store.ensure_collection()
    store.close()
