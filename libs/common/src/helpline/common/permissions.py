"""Who may publish and subscribe to what on NATS: one user per service, least privilege.

Each service's allow lists are derived from the bus layout (`subjects`, `layout`) and from
what the service really does, written down once here as grants:

- every process declares the layout (`layout.declare`: stream and bucket info, create and
  update; the durable task consumers), follows cancellations (a watch on `cancels`),
  beats in `replicas`, adds its spans to the trace store and answers on its own inbox prefix (`inbox_prefix`), so no service
  can read another's JetStream and KV replies;
- a worker pulls and acknowledges its kinds, reports on them (events), dead-letters them,
  waits out open breakers in `deferrals` and reads task records (a redelivery of a
  finished task is only acknowledged);
- submitting is publishing a kind's task subjects; reading a bucket is a get (direct or
  not), watching or scanning it is an ephemeral consumer on its stream, writing it is
  publishing `$KV.<bucket>.>`.

So the scraper cannot publish query replies or answers, rag cannot submit a scrape, the
embedder cannot touch API keys. `nats_authorization` renders the users for a nats-server
configuration (deploy/k8s/base/nats/auth.conf and deploy/docker/nats-auth.conf are made
by it: `python -m helpline.common.permissions`); tests/test_nats_permissions.py runs the
services under it on a real server.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from helpline.common import subjects
from helpline.common.subjects import Bucket, Kind, Priority

#: The services, each a NATS user of its own.
SERVICES = ("gateway", "scraper", "embedder", "rag", "maintenance")
#: `helpline up` against a server of one's own (docker-compose's lite profile): every
#: service in one process, so one user with what they all may do.
ALL_IN_ONE = "helpline"

_API = "$JS.API"
_USER = re.compile(r"^[A-Za-z0-9_-]+$")


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix a process connected as `user` uses (`_INBOX_<user>`): its own, so
    no other user may subscribe to its replies. `_INBOX` without a (plain) user name."""
    return f"_INBOX_{user}" if user and _USER.match(user) else "_INBOX"


def password_variable(user: str) -> str:
    """The environment variable the nats-server reads `user`'s password from."""
    return f"HELPLINE_NATS_PASSWORD_{user.upper()}"


@dataclass(frozen=True)
class Permissions:
    """A user's allow lists; everything else is refused."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass
class _Grants:
    prefix: str
    user: str
    publish: set[str] = field(default_factory=set)
    subscribe: set[str] = field(default_factory=set)

    def streams(self) -> list[str]:
        """Every stream the layout declares, buckets' included."""
        p = self.prefix
        names = [subjects.stream(kind, p) for kind in Kind]
        names += [subjects.events_stream(p), subjects.dlq_stream(p), subjects.requests_stream(p)]
        names.append(subjects.traces_stream(p))
        return names + [self.kv_stream(b) for b in Bucket]

    def kv_stream(self, bucket: Bucket) -> str:
        return f"KV_{subjects.bucket(bucket, self.prefix)}"

    def base(self) -> None:
        """What every process does: declare the layout, follow cancellations, beat."""
        for stream in self.streams():
            for op in ("INFO", "CREATE", "UPDATE"):
                self.publish.add(f"{_API}.STREAM.{op}.{stream}")
        for kind in Kind:
            for priority in Priority:
                self._durable(subjects.stream(kind, self.prefix), subjects.consumer(kind, priority))
        self._durable(subjects.events_stream(self.prefix), subjects.TRACKER_CONSUMER)
        self.watch(Bucket.CANCELS)
        self.kv_write(Bucket.REPLICAS)
        self.publish.add(subjects.traces_wildcard(self.prefix))  # its spans (`spanstore`)
        self.subscribe.add(f"{inbox_prefix(self.user)}.>")

    def _durable(self, stream: str, name: str) -> None:
        # nats-py's two spellings of creating (or updating) a durable consumer.
        self.publish.add(f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{name}")
        self.publish.add(f"{_API}.CONSUMER.CREATE.{stream}.{name}")
        self.publish.add(f"{_API}.CONSUMER.CREATE.{stream}.{name}.>")

    def work(self, *kinds: Kind) -> None:
        """Pull, acknowledge, report on and dead-letter tasks of `kinds`."""
        for kind in kinds:
            stream = subjects.stream(kind, self.prefix)
            for priority in Priority:
                consumer = subjects.consumer(kind, priority)
                self.publish.add(f"{_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}")
                self.publish.add(f"$JS.ACK.{stream}.{consumer}.>")
            self.publish.add(f"{self.prefix}.dlq.{kind}.*")
        self.emit(*kinds)
        self.kv_read(Bucket.DEFERRALS)
        self.kv_write(Bucket.DEFERRALS)
        # A redelivered task whose record is already terminal is only acknowledged.
        self.kv_read(Bucket.TASKS)

    def submit(self, *kinds: Kind) -> None:
        for kind in kinds:
            self.publish.add(subjects.tasks_wildcard(kind, self.prefix))

    def emit(self, *kinds: Kind) -> None:
        for kind in kinds:
            self.publish.add(subjects.event(kind, self.prefix))

    def kv_read(self, *buckets: Bucket) -> None:
        """Get entries: a direct get where the bucket allows it, else the stream API's."""
        for bucket in buckets:
            stream = self.kv_stream(bucket)
            self.publish.add(f"{_API}.DIRECT.GET.{stream}.>")
            self.publish.add(f"{_API}.STREAM.MSG.GET.{stream}")

    def kv_write(self, *buckets: Bucket) -> None:
        """Put, create, update and delete entries."""
        for bucket in buckets:
            self.publish.add(f"$KV.{subjects.bucket(bucket, self.prefix)}.>")

    def watch(self, *buckets: Bucket) -> None:
        """Watch or scan a bucket (`kvscan`): ephemeral consumers on its stream."""
        for bucket in buckets:
            self.reader(self.kv_stream(bucket))
            self.publish.add(f"$JS.FC.{self.kv_stream(bucket)}.>")

    def reader(self, stream: str) -> None:
        """Ephemeral consumers of a stream: create, ask for messages, follow, delete."""
        self.publish.add(f"{_API}.CONSUMER.CREATE.{stream}")
        self.publish.add(f"{_API}.CONSUMER.CREATE.{stream}.>")
        for op in ("INFO", "DELETE", "MSG.NEXT"):
            self.publish.add(f"{_API}.CONSUMER.{op}.{stream}.*")
        self.publish.add(f"$JS.ACK.{stream}.>")

    def permissions(self) -> Permissions:
        return Permissions(tuple(sorted(self.publish)), tuple(sorted(self.subscribe)))


def _gateway(g: _Grants) -> None:
    p = g.prefix
    # Accepts every kind of work (queries, crawls, scrapes, batches, documents to embed,
    # maintenance), replays dead letters, cancels; the tracker reports for all of them.
    g.submit(*Kind)
    g.emit(*Kind)
    g.subscribe.add(f"{p}.replies.>")  # rag's answers, on this gateway's reply inbox
    events = subjects.events_stream(p)
    for op in ("CONSUMER.MSG.NEXT", "CONSUMER.INFO"):
        g.publish.add(f"{_API}.{op}.{events}.{subjects.TRACKER_CONSUMER}")
    g.publish.add(f"$JS.ACK.{events}.{subjects.TRACKER_CONSUMER}.>")
    # The queue views: each consumer's state and its oldest waiting task.
    for kind in Kind:
        stream = subjects.stream(kind, p)
        g.publish.add(f"{_API}.STREAM.MSG.GET.{stream}")
        for priority in Priority:
            g.publish.add(f"{_API}.CONSUMER.INFO.{stream}.{subjects.consumer(kind, priority)}")
    # Dead letters: listed, read, deleted once replayed.
    dlq = subjects.dlq_stream(p)
    g.publish.update(f"{_API}.STREAM.MSG.{op}.{dlq}" for op in ("GET", "DELETE"))
    g.publish.add(f"{_API}.DIRECT.GET.{dlq}.>")
    # The request log: written by each replica, read back for the views.
    g.publish.add(subjects.requests(p))
    g.reader(subjects.requests_stream(p))
    g.reader(subjects.traces_stream(p))  # the trace view
    g.publish.add(f"{_API}.STREAM.NAMES")  # a pull subscription finds its stream by subject
    g.kv_read(Bucket.TASKS, Bucket.CRAWLS, Bucket.ANSWERS, Bucket.GENERATIONS, Bucket.KEYS)
    g.kv_read(Bucket.RATES, Bucket.PAGES)
    g.kv_write(Bucket.TASKS, Bucket.CRAWLS, Bucket.CANCELS, Bucket.KEYS, Bucket.RATES)
    g.watch(Bucket.TASKS, Bucket.CRAWLS, Bucket.GENERATIONS, Bucket.KEYS, Bucket.RATES)
    g.watch(Bucket.REPLICAS)
    g.kv_read(Bucket.SOURCES)  # sources: created, listed, changed, deleted
    g.kv_write(Bucket.SOURCES)
    g.watch(Bucket.SOURCES)
    g.watch(Bucket.PAGES)  # the documents listing
    # Webhooks: registered, listed, changed, deleted, followed for the tracker's
    # announcements; their deliveries started (listed as pending) and listed.
    g.kv_read(Bucket.WEBHOOKS, Bucket.DELIVERIES)
    g.kv_write(Bucket.WEBHOOKS, Bucket.DELIVERIES)
    g.watch(Bucket.WEBHOOKS, Bucket.DELIVERIES)
    g.kv_read(Bucket.TEXTS)  # a document's Markdown
    # Clearing the answer cache.
    g.publish.add(f"{_API}.STREAM.PURGE.{g.kv_stream(Bucket.ANSWERS)}")


def _scraper(g: _Grants) -> None:
    # Scrapes pages and crawls sites: a crawl's pages become scrape tasks, a page's chunks
    # an embed task (a chunk batch); politeness per host, what was seen per page.
    g.work(Kind.SCRAPE, Kind.CRAWL)
    g.submit(Kind.SCRAPE, Kind.EMBED)
    g.kv_read(Bucket.CRAWLS, Bucket.HOSTS, Bucket.PAGES)
    g.kv_write(Bucket.CRAWLS, Bucket.HOSTS)
    g.kv_write(Bucket.PAGES)  # a crawl reached the page, or found it gone (a miss)
    g.watch(Bucket.CRAWLS)


def _embedder(g: _Grants) -> None:
    # Embeds chunk batches; a page's batch reports as the scrape it came from.
    g.work(Kind.EMBED)
    g.emit(Kind.SCRAPE)
    g.kv_read(Bucket.PAGES, Bucket.GENERATIONS, Bucket.TEXTS)
    g.kv_write(Bucket.PAGES, Bucket.GENERATIONS, Bucket.TEXTS)


def _rag(g: _Grants) -> None:
    # Answers questions on the asking gateway's reply inbox and keeps them in the cache.
    g.work(Kind.QUERY)
    g.publish.add(f"{g.prefix}.replies.>")
    g.kv_read(Bucket.ANSWERS, Bucket.GENERATIONS)
    g.kv_write(Bucket.ANSWERS)


def _maintenance(g: _Grants) -> None:
    # Runs maintenance jobs and schedules its own; the reconcile job has the tracker
    # recount parents (crawls, scrape batches, embed batches) whose progress fell behind.
    g.work(Kind.MAINTENANCE)
    g.submit(Kind.MAINTENANCE)
    g.emit(Kind.CRAWL, Kind.SCRAPE, Kind.EMBED)
    g.kv_read(Bucket.TASKS, Bucket.CRAWLS)
    g.kv_write(Bucket.TASKS, Bucket.CRAWLS)
    g.watch(Bucket.TASKS, Bucket.CRAWLS)
    # Starts each due source's crawl, one replica at a time (the lease), and notes the run.
    g.submit(Kind.CRAWL)
    g.kv_read(Bucket.SOURCES, Bucket.LEASES)
    g.kv_write(Bucket.SOURCES, Bucket.LEASES)
    g.watch(Bucket.SOURCES)
    # After a run, its sweep counts misses on the source's pages and removes those missed twice.
    g.kv_read(Bucket.PAGES)
    g.kv_write(Bucket.PAGES)
    g.watch(Bucket.PAGES)
    g.submit(Kind.EMBED)
    # The watchdog: reads every running record and the heartbeats, walks the work queues
    # for the messages still stored, and settles a task nobody runs with an event.
    g.watch(Bucket.REPLICAS)
    g.emit(*Kind)
    for kind in Kind:
        g.publish.add(f"{_API}.STREAM.MSG.GET.{subjects.stream(kind, g.prefix)}")
    # Delivers webhooks: reads each one's secret, notes every attempt; a source's sweep
    # announces `source.refreshed` (a delivery task, its record, its listing).
    g.work(Kind.WEBHOOK)
    g.submit(Kind.WEBHOOK)
    g.kv_read(Bucket.WEBHOOKS, Bucket.DELIVERIES)
    g.kv_write(Bucket.DELIVERIES)
    g.watch(Bucket.WEBHOOKS)  # followed, so a changed or deleted webhook is seen at once


_SERVICE_GRANTS = {
    "gateway": _gateway,
    "scraper": _scraper,
    "embedder": _embedder,
    "rag": _rag,
    "maintenance": _maintenance,
}


def permissions(service: str, prefix: str = subjects.PREFIX) -> Permissions:
    """What `service` (or `ALL_IN_ONE`: every service) may publish and subscribe to."""
    grants = _Grants(prefix, service)
    grants.base()
    for name in SERVICES if service == ALL_IN_ONE else (service,):
        _SERVICE_GRANTS[name](grants)
    return grants.permissions()


def nats_authorization(
    users: Iterable[str] = SERVICES,
    prefix: str = subjects.PREFIX,
    passwords: Mapping[str, str] | None = None,
) -> str:
    """The `authorization` block of a nats-server configuration: each user with its
    permissions, its password the literal in `passwords` or, without, the environment
    variable `password_variable(user)` (the server reads it when it starts)."""
    lines = [
        "# Made by helpline.common.permissions (python -m helpline.common.permissions):",
        "# one NATS user per Helpline service, allowed only the subjects it uses.",
        "authorization {",
        "  users: [",
    ]
    for user in users:
        allowed = permissions(user, prefix)
        secret = json.dumps(passwords[user]) if passwords else f"${password_variable(user)}"
        lines += [
            "    {",
            f"      user: {user}",
            f"      password: {secret}",
            "      permissions: {",
            *_allow("publish", allowed.publish),
            *_allow("subscribe", allowed.subscribe),
            "      }",
            "    }",
        ]
    return "\n".join([*lines, "  ]", "}", ""])


def _allow(what: str, allowed: tuple[str, ...]) -> list[str]:
    return [
        f"        {what}: {{",
        "          allow: [",
        *(f"            {json.dumps(s)}" for s in allowed),
        "          ]",
        "        }",
    ]


def main(argv: list[str]) -> None:
    """`python -m helpline.common.permissions [all-in-one] [prefix]`: print the users."""
    users = (*SERVICES, ALL_IN_ONE) if argv[:1] == ["all-in-one"] else SERVICES
    rest = argv[1:] if argv[:1] == ["all-in-one"] else argv
    sys.stdout.write(nats_authorization(users, rest[0] if rest else subjects.PREFIX))


if __name__ == "__main__":
    main(sys.argv[1:])
