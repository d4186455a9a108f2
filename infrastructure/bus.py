"""The event bus: the log's events on Redis Streams, and a library to consume them.

The relay (``projections/relay.py``) publishes every event of the log, in
log order. The log stays the truth; the bus is a copy for reacting to events
(notifications, integrations), trimmed to roughly the last ``stream_maxlen``
entries per stream.

Streams (``prefix`` is ``reporunner`` unless configured; tests use their own):

- ``{prefix}:events``: every event.
- ``{prefix}:events:{org_id}``: one organisation's events.
- ``{prefix}:retry:{group}``: dead letters replayed to one consumer group.
- ``{prefix}:dlq:{group}``: messages one consumer group gave up on.

Entry ids are log positions: the event at position 1234 is entry ``1234-0`` in
both of its streams, so an id says where the event is in the log (use it as
``X-Min-Position`` to read your own writes on the read API). A message's fields
are all strings:

=============== ============================================================
position        the log position (as in the entry id)
aggregate_id    the workflow's or execution's id (a UUID)
version         the aggregate's version after this event
type            ``Workflow.Updated``, ``Execution.Failed``, ...
timestamp       ISO 8601, UTC
org_id          the organisation
actor           who did it (``apikey:...``, a worker id)
correlation_id  the request that caused it
data            compact JSON of the event's own attributes (with ``meta``)
=============== ============================================================

Consuming::

    from infrastructure.bus import Consumer, Message

    def notify(message: Message) -> None:
        print(message.type, message.aggregate_id, message.data.get("error"))

    consumer = Consumer(
        "redis://127.0.0.1:6379/0",
        group="notifier",
        consumer_name="notifier-1",  # unique per process: the hostname and pid
        handler=notify,
        patterns=["Execution.Failed"],  # fnmatch globs over ``type``
        org_id=None,  # or one organisation's stream
    )
    consumer.run(stop)  # a threading.Event; or poll_once() from a loop of your own

Semantics:

- **Consumer groups start at ``0``**: a new group first works through the
  history the streams still hold (up to ``stream_maxlen`` events), then
  follows live. That is what a new subscriber usually wants (a notifier that
  was deployed late still sees recent failures) and never silently skips
  anything; pass ``start_from="$"`` to see only what is published from now on.
- **At least once**: an entry is acknowledged (``XACK``) only after the
  handler returned. A crash between the two delivers it again, so handlers
  must be idempotent: ``position`` (or ``aggregate_id`` + ``version``)
  identifies an event for de-duplication.
- **Order**: a group receives the log order on first delivery. Retries,
  claims and replays arrive later, out of that order.
- **Filtering**: entries whose ``type`` matches none of ``patterns`` are
  acknowledged without calling the handler.
- **Retries**: a handler that raises leaves the entry pending; it is
  delivered again after ``retry_base_s * 2 ** (attempt - 1)`` seconds, at
  most ``retry_cap_s``. Redis' delivery count (``XPENDING``) is the attempt
  counter, so retries survive a restart of the consumer. Keep ``retry_cap_s``
  at most ``claim_idle_s``, or another consumer of the group claims the entry
  (which only retries it sooner).
- **Dead letters**: after ``max_attempts`` failed deliveries the entry goes to
  ``{prefix}:dlq:{group}``: the original fields plus ``dlq_error``,
  ``dlq_attempts``, ``dlq_source_stream``, ``dlq_source_id``,
  ``dlq_consumer`` and ``dlq_failed_at``; the original is then acknowledged
  (both in one ``MULTI``). An entry delivered more than ``max_attempts``
  times without an answer (its handler keeps crashing the process) is dead
  lettered without calling the handler again. Dead letters are never trimmed.
- **Dead consumers**: entries pending for more than ``claim_idle_s`` with any
  consumer of the group are taken over (``XAUTOCLAIM``) and handled.
- **Replaying dead letters** (``dlq_replay``) adds them to the group's own
  retry stream, which its consumers read beside the events stream, with new
  ids. Not to the source stream: its ids are log positions, and an entry
  added there with an automatic id (a timestamp, far above any position)
  would make Redis refuse every later event; and every other group would get
  it again too. Replayed entries keep their ``position`` field; once handled
  they are deleted from the retry stream, which stays empty at rest.

Operating: ``dlq_list``, ``dlq_replay``, ``dlq_purge`` and ``bus_status`` below,
and ``reporunner bus`` on the command line.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import redis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

log = structlog.get_logger("reporunner.bus")

DEFAULT_PREFIX = "reporunner"
DLQ_FIELD_PREFIX = "dlq_"
MESSAGE_FIELDS = (
    "position",
    "aggregate_id",
    "version",
    "type",
    "timestamp",
    "org_id",
    "actor",
    "correlation_id",
    "data",
)


# -- names ------------------------------------------------------------------------------


def events_stream(prefix: str = DEFAULT_PREFIX, org_id: str | None = None) -> str:
    """All events, or one organisation's."""
    return f"{prefix}:events" if org_id is None else f"{prefix}:events:{org_id}"


def retry_stream(group: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:retry:{group}"


def dlq_stream(group: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:dlq:{group}"


def entry_id(position: int) -> str:
    """The stream entry id of the event at a log position."""
    return f"{position}-0"


def connect(redis_url: str) -> redis.Redis:
    """A client that answers in strings and fails fast.

    One retry covers a pooled connection that went stale (Redis restarted);
    longer outages are for the caller's loop to wait out with its own backoff.
    """
    return redis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1),
    )


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One event as a consumer's handler receives it."""

    stream: str
    """Where it was read: an events stream, or the group's retry stream."""
    id: str
    """Its entry id in ``stream`` (the log position, except in the retry stream)."""
    position: int
    aggregate_id: UUID
    version: int
    type: str
    timestamp: datetime
    org_id: str
    actor: str
    correlation_id: str
    data: dict[str, Any]
    attempt: int
    """1 on the first delivery."""
    fields: Mapping[str, str] = field(repr=False)
    """The entry as stored, for forwarding it elsewhere."""

    @classmethod
    def from_entry(
        cls, stream: str, entry: str, fields: Mapping[str, str], attempt: int
    ) -> Message:
        return cls(
            stream=stream,
            id=entry,
            position=int(fields["position"]),
            aggregate_id=UUID(fields["aggregate_id"]),
            version=int(fields["version"]),
            type=fields["type"],
            timestamp=datetime.fromisoformat(fields["timestamp"]),
            org_id=fields["org_id"],
            actor=fields["actor"],
            correlation_id=fields["correlation_id"],
            data=orjson.loads(fields["data"]),
            attempt=attempt,
            fields=dict(fields),
        )


Handler = Callable[[Message], object]


# -- consuming --------------------------------------------------------------------------


class Consumer:
    """One member of a consumer group; see the module's docstring for the semantics."""

    def __init__(
        self,
        redis_url: str,
        group: str,
        consumer_name: str,
        *,
        handler: Handler,
        patterns: Sequence[str] = ("*",),
        org_id: str | None = None,
        max_attempts: int = 5,
        retry_base_s: float = 0.5,
        retry_cap_s: float = 30.0,
        claim_idle_s: float = 30.0,
        prefix: str = DEFAULT_PREFIX,
        start_from: str = "0",
        batch_size: int = 100,
        client: redis.Redis | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.redis = client if client is not None else connect(redis_url)
        self.group = group
        self.consumer_name = consumer_name
        self.handler = handler
        self.patterns = tuple(patterns)
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.claim_idle_s = claim_idle_s
        self.start_from = start_from
        self.batch_size = batch_size
        self.source = events_stream(prefix, org_id)
        self.retries = retry_stream(group, prefix)
        self.dead_letters = dlq_stream(group, prefix)
        self._groups_ready = False
        self._claim_cursors = {self.source: "0-0", self.retries: "0-0"}

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, waiting out Redis outages with backoff."""
        backoff = self.retry_base_s
        # Retries and claims need not be looked for on every read.
        housekeeping_every = min(self.retry_base_s, self.claim_idle_s / 2, 1.0)
        block_ms = max(50, int(housekeeping_every * 1000))
        next_housekeeping = 0.0
        while not stop.is_set():
            try:
                housekeeping = time.monotonic() >= next_housekeeping
                if housekeeping:
                    next_housekeeping = time.monotonic() + housekeeping_every
                self._round(housekeeping, block_ms)
                backoff = self.retry_base_s
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning(
                    "consumer cannot reach Redis; retrying",
                    group=self.group,
                    consumer=self.consumer_name,
                    error=str(exc),
                    retry_in_s=backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_cap_s)
            except Exception:
                log.exception("consumer loop failed; retrying", group=self.group)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_cap_s)

    def poll_once(self, block_ms: int | None = None) -> int:
        """One round: due retries, abandoned entries, then new entries.

        Returns how many entries were dealt with (handled, skipped or dead
        lettered). ``block_ms`` waits that long for new entries (``None``: not at
        all; keep it under the client's 5 s socket timeout).
        """
        return self._round(True, block_ms)

    def _round(self, housekeeping: bool, block_ms: int | None) -> int:
        try:
            self._ensure_groups()
            done = (self.retry_failed() + self.claim_abandoned()) if housekeeping else 0
            return done + self.read_new(None if done else block_ms)
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # The stream was deleted, or Redis lost it: make the groups again.
            log.warning("consumer group is gone; recreating it", group=self.group, error=str(exc))
            self._groups_ready = False
            self._claim_cursors = dict.fromkeys(self._claim_cursors, "0-0")
            return 0

    def read_new(self, block_ms: int | None = None) -> int:
        """Entries never delivered to this group yet."""
        response = self.redis.xreadgroup(
            self.group,
            self.consumer_name,
            {self.source: ">", self.retries: ">"},
            count=self.batch_size,
            block=block_ms,
        )
        done = 0
        for stream, entries in _stream_entries(response):
            for entry, fields in entries:
                self._deliver(stream, entry, fields, attempt=1)
                done += 1
        return done

    def retry_failed(self) -> int:
        """This consumer's failed entries whose backoff has elapsed."""
        done = 0
        first_delay_ms = self._delay_ms(1)
        for stream in (self.source, self.retries):
            pending = self.redis.xpending_range(
                stream,
                self.group,
                "-",
                "+",
                self.batch_size,
                consumername=self.consumer_name,
                idle=first_delay_ms,
            )
            for entry in pending:
                delivered = int(entry["times_delivered"])
                delay_ms = self._delay_ms(delivered)
                if int(entry["time_since_delivered"]) < delay_ms:
                    continue
                # min_idle again: if another consumer claimed it meanwhile, we get nothing.
                claimed = self.redis.xclaim(
                    stream, self.group, self.consumer_name, delay_ms, [entry["message_id"]]
                )
                for claimed_id, fields in _existing_entries(claimed):
                    self._deliver(stream, claimed_id, fields, attempt=delivered + 1)
                    done += 1
        return done

    def claim_abandoned(self) -> int:
        """Entries pending with any consumer for longer than ``claim_idle_s``."""
        done = 0
        for stream in (self.source, self.retries):
            result = self.redis.xautoclaim(
                stream,
                self.group,
                self.consumer_name,
                int(self.claim_idle_s * 1000),
                start_id=self._claim_cursors[stream],
                count=self.batch_size,
            )
            self._claim_cursors[stream] = str(result[0])
            claimed = list(_existing_entries(result[1]))
            if not claimed:
                continue
            # XAUTOCLAIM counted this delivery; it does not say how many there were.
            lookup = self.redis.pipeline(transaction=False)
            for claimed_id, _ in claimed:
                lookup.xpending_range(
                    stream, self.group, claimed_id, claimed_id, 1, self.consumer_name
                )
            counts = [rows[0]["times_delivered"] if rows else 1 for rows in lookup.execute()]
            for (claimed_id, fields), delivered in zip(claimed, counts, strict=True):
                log.info(
                    "claimed an abandoned entry",
                    group=self.group,
                    stream=stream,
                    id=claimed_id,
                    deliveries=delivered,
                )
                self._deliver(stream, claimed_id, fields, attempt=int(delivered))
                done += 1
        return done

    def close(self) -> None:
        self.redis.close()

    # -- one entry ------------------------------------------------------------------

    def _deliver(self, stream: str, entry: str, fields: Mapping[str, str], attempt: int) -> None:
        if not self._wanted(fields.get("type", "")):
            self._ack(stream, entry)
            return
        if attempt > self.max_attempts:
            # Delivered that often with no answer: its handler keeps killing the consumer.
            self._dead_letter(
                stream,
                entry,
                fields,
                attempt - 1,
                f"delivered {attempt - 1} times without an acknowledgement",
            )
            return
        try:
            message = Message.from_entry(stream, entry, fields, attempt)
        except (KeyError, ValueError) as exc:
            self._dead_letter(stream, entry, fields, attempt, f"unreadable entry: {exc!r}")
            return
        try:
            self.handler(message)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempt >= self.max_attempts:
                self._dead_letter(stream, entry, fields, attempt, error)
            else:
                log.warning(
                    "handler failed; will retry",
                    group=self.group,
                    stream=stream,
                    id=entry,
                    type=message.type,
                    attempt=attempt,
                    retry_in_s=self._delay_ms(attempt) / 1000,
                    error=error,
                )
            return
        self._ack(stream, entry)

    def _wanted(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.patterns)

    def _ack(self, stream: str, entry: str) -> None:
        if stream == self.retries:
            # Only this group reads its retry stream: a handled entry can go.
            with self.redis.pipeline(transaction=True) as tx:
                tx.xack(stream, self.group, entry)
                tx.xdel(stream, entry)
                tx.execute()
        else:
            self.redis.xack(stream, self.group, entry)

    def _dead_letter(
        self, stream: str, entry: str, fields: Mapping[str, str], attempts: int, error: str
    ) -> None:
        letter = {k: v for k, v in fields.items() if not k.startswith(DLQ_FIELD_PREFIX)}
        letter |= {
            "dlq_error": error,
            "dlq_attempts": str(attempts),
            "dlq_source_stream": stream,
            "dlq_source_id": entry,
            "dlq_consumer": self.consumer_name,
            "dlq_failed_at": datetime.now(UTC).isoformat(),
        }
        with self.redis.pipeline(transaction=True) as tx:
            tx.xadd(self.dead_letters, letter)  # type: ignore[arg-type]
            tx.xack(stream, self.group, entry)
            if stream == self.retries:
                tx.xdel(stream, entry)
            tx.execute()
        log.error(
            "message dead-lettered",
            group=self.group,
            stream=stream,
            id=entry,
            type=fields.get("type"),
            attempts=attempts,
            error=error,
        )

    # -- plumbing -------------------------------------------------------------------

    def _delay_ms(self, failed_attempts: int) -> int:
        delay = self.retry_base_s * 2 ** max(0, failed_attempts - 1)
        return int(min(delay, self.retry_cap_s) * 1000)

    def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        # The retry stream holds only what was replayed to this group: all of it is due.
        for stream, start in ((self.source, self.start_from), (self.retries, "0")):
            ensure_group(self.redis, stream, self.group, start)
        self._groups_ready = True


def ensure_group(client: redis.Redis, stream: str, group: str, start: str = "0") -> None:
    """Create the group (and the stream) unless it exists."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _stream_entries(response: Any) -> Iterable[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """``XREADGROUP``'s answer as (stream, entries), in RESP2's list or RESP3's map form."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.items())
    return [(stream, entries) for stream, entries in response]


def _existing_entries(entries: Any) -> Iterable[tuple[str, dict[str, str]]]:
    """Entries that still exist (a claimed one that was trimmed comes back without fields)."""
    for entry, fields in entries or []:
        if fields is not None:
            yield entry, fields


# -- dead letters -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    id: str
    """Its id in the dead-letter stream (what ``dlq_replay`` takes)."""
    type: str
    position: int | None
    error: str
    attempts: int
    source_stream: str
    source_id: str
    consumer: str
    failed_at: str
    message: dict[str, str]
    """The original entry's fields."""


def dlq_list(
    client: redis.Redis, group: str, count: int = 100, *, prefix: str = DEFAULT_PREFIX
) -> list[DeadLetter]:
    """The group's oldest ``count`` dead letters."""
    entries = _existing_entries(client.xrange(dlq_stream(group, prefix), count=count))
    return [_dead_letter(entry, fields) for entry, fields in entries]


def dlq_replay(
    client: redis.Redis,
    group: str,
    ids: Sequence[str] | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
) -> list[str]:
    """Deliver dead letters to the group again; returns the dead-letter ids replayed.

    ``ids=None`` replays all of them present now (a message that fails again
    comes back as a new dead letter, and is not replayed a second time). Each
    moves in one ``MULTI``: added to the group's retry stream, removed here.
    """
    source = dlq_stream(group, prefix)
    target = retry_stream(group, prefix)
    ensure_group(client, target, group)
    if ids is not None:
        lookup = client.pipeline(transaction=False)
        for wanted in ids:
            lookup.xrange(source, wanted, wanted)
        batches: Iterable[list[tuple[str, dict[str, str]]]] = [
            [entry for found in lookup.execute() for entry in _existing_entries(found)]
        ]
    else:
        batches = _dead_letters_up_to_now(client, source)
    replayed: list[str] = []
    for entries in batches:
        with client.pipeline(transaction=True) as tx:
            for entry, fields in entries:
                original = {k: v for k, v in fields.items() if not k.startswith(DLQ_FIELD_PREFIX)}
                tx.xadd(target, original)  # type: ignore[arg-type]
                tx.xdel(source, entry)
            tx.execute()
        replayed += [entry for entry, _ in entries]
    if replayed:
        log.info("dead letters replayed", group=group, count=len(replayed))
    return replayed


def _dead_letters_up_to_now(
    client: redis.Redis, stream: str, page: int = 500
) -> Iterable[list[tuple[str, dict[str, str]]]]:
    newest = list(_existing_entries(client.xrevrange(stream, count=1)))
    if not newest:
        return
    last = newest[0][0]
    while True:
        # Replayed entries are deleted, so the next page starts at the beginning again.
        entries = list(_existing_entries(client.xrange(stream, "-", last, count=page)))
        if not entries:
            return
        yield entries


def dlq_purge(client: redis.Redis, group: str, *, prefix: str = DEFAULT_PREFIX) -> int:
    """Delete all of the group's dead letters; returns how many there were."""
    stream = dlq_stream(group, prefix)
    with client.pipeline(transaction=True) as tx:
        tx.xlen(stream)
        tx.delete(stream)
        length, _ = tx.execute()
    return int(length)


def _dead_letter(entry: str, fields: dict[str, str]) -> DeadLetter:
    position = fields.get("position", "")
    return DeadLetter(
        id=entry,
        type=fields.get("type", ""),
        position=int(position) if position.isdigit() else None,
        error=fields.get("dlq_error", ""),
        attempts=int(fields.get("dlq_attempts", "0") or 0),
        source_stream=fields.get("dlq_source_stream", ""),
        source_id=fields.get("dlq_source_id", ""),
        consumer=fields.get("dlq_consumer", ""),
        failed_at=fields.get("dlq_failed_at", ""),
        message={k: v for k, v in fields.items() if not k.startswith(DLQ_FIELD_PREFIX)},
    )


# -- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStatus:
    name: str
    consumers: int
    pending: int
    """Delivered and not acknowledged yet (being handled, or failed and waiting to retry)."""
    lag: int | None
    """Entries not delivered to the group yet; ``None`` when Redis cannot tell."""
    last_delivered_id: str


@dataclass(frozen=True)
class StreamStatus:
    name: str
    length: int
    last_id: str
    groups: list[GroupStatus]


@dataclass(frozen=True)
class BusStatus:
    streams: list[StreamStatus]
    dead_letters: dict[str, int]
    """Per consumer group, the length of its dead-letter stream."""


def bus_status(client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> BusStatus:
    """Every stream under ``prefix`` with its consumer groups, and the dead-letter counts."""
    names = sorted(
        str(name) for name in client.scan_iter(match=f"{_glob_escape(prefix)}:*", _type="stream")
    )
    dlq_prefix = dlq_stream("", prefix)
    streams = []
    dead_letters: dict[str, int] = {}
    for name in names:
        if name.startswith(dlq_prefix):
            dead_letters[name.removeprefix(dlq_prefix)] = int(client.xlen(name))
            continue
        info = client.xinfo_stream(name)
        groups = [
            GroupStatus(
                name=str(group["name"]),
                consumers=int(group["consumers"]),
                pending=int(group["pending"]),
                lag=None if group.get("lag") is None else int(group["lag"]),
                last_delivered_id=str(group["last-delivered-id"]),
            )
            for group in client.xinfo_groups(name)
        ]
        streams.append(
            StreamStatus(
                name=name,
                length=int(info["length"]),
                last_id=str(info["last-generated-id"]),
                groups=groups,
            )
        )
    for stream in streams:
        for group in stream.groups:
            dead_letters.setdefault(group.name, 0)
    return BusStatus(streams=streams, dead_letters=dead_letters)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by Redis' glob patterns (``SCAN MATCH``)."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
