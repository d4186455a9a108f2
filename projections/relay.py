"""The relay: every event of the log, in log order, onto Redis Streams.

- Where: the event at log position P becomes entry ``P-0`` of
  ``{prefix}:events:{org_id}`` and of ``{prefix}:events`` (fields and
  consumer semantics: ``infrastructure/bus.py``), trimmed ``MAXLEN ~ N``.
- No gap: the position lives in PostgreSQL (``projection_tracking``, row
  ``relay``) and moves only after Redis acknowledged the whole batch (one
  script call running its ``XADD``s). A crash in between publishes the batch
  again.
- No duplicate: Redis refuses an id at or below a stream's last id, so an
  entry published before the crash is refused the second time; a refusal
  counts as "already published" (for that stream), never as a failure.
- Redis lost data (restarted without persistence, or from an older
  snapshot, or flushed): when it starts following, the relay compares the
  all-events stream's last id with its position; and every batch's script
  first checks that the stream still holds what this relay last added to it
  (a restart between batches is invisible otherwise: the client reconnects
  silently). If Redis is behind, the relay logs a warning, counts it
  (``reporunner_relay_redis_data_losses_total``), and publishes again
  from where Redis is (at most the last ``stream_maxlen`` events: the streams
  would trim older ones at once). A stream *ahead* of the log (another deployment on
  the same prefix, or a log restored from an older backup) stops the relay
  with an error rather than let it take new events for published ones.
- Redis down: wait and retry with capped exponential backoff, and say so in
  ``status()``. Commands are unaffected: the log is the truth, the relay
  catches up when Redis is back.
- Every event can be published: ``data`` falls back to the stdlib encoder for
  what orjson refuses (integers beyond 64 bits). An event that still cannot
  be made a message (a state that does not decode) becomes a dead letter
  after its retries, and the relay goes on (``projections/follower.py``).
- One active relay per deployment, live wake-ups, reconnection: the follower
  loop, as for projectors.
- Encrypted events travel payload-free: an attribute holding a sealed value
  (an execution's input, outputs, output, error: ``commands/payloads.py``)
  is left out of ``data``, whose ``sealed_fields`` names what was left out.
  Ciphertext in a stream could outlive an erasure (trimming is approximate,
  consumers copy it) and help nobody without the key; the read API gives
  authorised readers the plaintext.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
import structlog
from redis.exceptions import ResponseError

from commands.application import WorkflowApplication
from commands.history import event_type
from infrastructure import metrics, tracing
from infrastructure.bus import DEFAULT_PREFIX, connect, entry_id, events_stream
from infrastructure.database import PgTarget
from infrastructure.eventstore import EVENTS_TABLE, decode_event
from infrastructure.sealing import is_sealed
from projections.dead_letters import skip_next
from projections.follower import Follower, FollowerLoop, RetryPolicy

log = structlog.get_logger("reporunner.relay")

RELAY_NAME = "relay"
# A batch's XADDs, run by Redis. One call instead of a pipeline of commands,
# because redis-py packs each command's arguments in Python, which cost more
# than everything else the relay does: with a dozen fields an event, the
# pipeline topped out below 10,000 events/s. Here the client sends one JSON
# string (ARGV[2]: [[entry id, [stream, ...], [field, value, ...]], ...]).
# An id at or below a stream's last one is refused by Redis: published before.
# First, in the same call: if the all-events stream (ARGV[4]) is behind what
# this relay last published to it (ARGV[3]), Redis lost data since (a restart
# without persistence, a flush: the client reconnects silently). Then nothing
# is added and the answer is {-1, the position Redis holds}; else it is
# {how many XADDs were refused, 0}. Any other error stops the batch.
_PUBLISH_SCRIPT = """
local expected = tonumber(ARGV[3])
if expected > 0 then
  local holds = 0
  local info = redis.pcall('XINFO', 'STREAM', ARGV[4])
  if type(info) == 'table' and not info.err then
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        holds = tonumber(string.match(info[i + 1], '^(%d+)'))
      end
    end
  end
  if holds < expected then
    return {-1, holds}
  end
end
local refused = 0
for _, message in ipairs(cjson.decode(ARGV[2])) do
  for _, stream in ipairs(message[2]) do
    local added = redis.pcall('XADD', stream, 'MAXLEN', '~', ARGV[1], message[1],
                              unpack(message[3]))
    if type(added) == 'table' and added.err then
      if not string.find(added.err, 'equal or smaller', 1, true) then
        return redis.error_reply(added.err)
      end
      refused = refused + 1
    end
  end
end
return {refused, 0}
"""
# Event attributes that travel as message fields of their own, or not at all.
_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


@dataclass(frozen=True)
class BusConfig:
    prefix: str = DEFAULT_PREFIX
    """Stream names start with it: one per deployment (and per test run)."""
    stream_maxlen: int = 1_000_000
    """Each stream keeps about this many entries (``MAXLEN ~``)."""
    relay_batch: int = 500
    """Events per script call and per position commit (Redis runs a batch in ~5 ms)."""


@dataclass(frozen=True)
class RelayStatus:
    position: int
    """The last log position published (and committed)."""
    head: int
    """The log's last position, when last looked at."""
    lag: int
    redis_ok: bool
    redis_down_since: datetime | None = None
    last_error: str | None = None
    """The latest error, kept after recovery for diagnosis."""
    failing_since: datetime | None = None
    """Stuck for another reason than Redis (PostgreSQL away, an event that cannot
    be decoded, a stream ahead of the log); cleared by the next good batch."""
    active: bool | None = None
    """In a relay's own status: this instance publishes (``False``: it stands by,
    or is between attempts). From ``relay_status``: some instance publishes."""

    def summary(self) -> str:
        """One line for ``/readyz`` (a relay's own status)."""
        if not self.redis_ok:
            if self.redis_down_since is None:
                return f"redis down: {self.last_error}"
            since = self.redis_down_since.isoformat(timespec="seconds")
            return f"redis down since {since}: {self.last_error}"
        if self.failing_since is not None:
            since = self.failing_since.isoformat(timespec="seconds")
            return f"failing since {since}: {self.last_error}"
        if self.active is False:
            return "standby"
        return "ok" if not self.lag else f"ok, {self.lag} events behind"


class RelayConflict(RuntimeError):
    """Redis holds entries the log has not reached: publishing would lose events."""


class RedisLostData(Exception):
    """The all-events stream is behind what this relay published to it."""

    def __init__(self, holds: int, published: int) -> None:
        super().__init__(f"Redis holds position {holds}, the relay had published {published}")
        self.holds = holds


class Relay(Follower):
    """Publishes the log to Redis Streams; ``run_forever`` in a thread of its own."""

    # Redis away (or refusing writes: out of memory, a replica) is never an
    # event's fault: reconnect and retry, never dead-letter.
    transient = (psycopg.OperationalError, redis.RedisError)

    def __init__(
        self,
        app: WorkflowApplication,
        target: PgTarget,
        redis_url: str,
        config: BusConfig | None = None,
        *,
        name: str = RELAY_NAME,
        poll_s: float = 1.0,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 5.0,
        retry_attempts: int = 3,
    ) -> None:
        self.app = app
        self.target = target
        self.config = config or BusConfig()
        self.name = name
        self.lock_key = _lock_key(name)
        self.poll_s = poll_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.retry_attempts = retry_attempts
        self.redis = connect(redis_url)
        self._publish_script = self.redis.register_script(_PUBLISH_SCRIPT)
        self.all_events = events_stream(self.config.prefix)
        self.already_published = 0
        """Entries Redis refused as present: re-publishing after a crash or a lost position."""
        self.redis_data_losses = 0
        """Times Redis was found behind what it had acknowledged, and published to again."""
        self._published_through = 0
        """The last entry this relay added to the all-events stream (0: none known yet)."""
        self._status = RelayStatus(position=0, head=0, lag=0, redis_ok=True, active=False)

    # -- status -----------------------------------------------------------------------

    def status(self) -> RelayStatus:
        """What this instance last saw; no I/O, safe from any thread."""
        return self._status

    def _set(self, **changes: Any) -> None:
        status = replace(self._status, **changes)
        # One assignment: readers in other threads see the old status or the new one.
        self._status = replace(status, lag=max(0, status.head - status.position))

    # -- one batch --------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.target.conninfo(
                connect_timeout=5, application_name=f"reporunner-relay:{self.name}"
            ),
            autocommit=True,
        )

    def ensure_tracking(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO projection_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
            (self.name,),
        )

    def publish_batch(self, conn: psycopg.Connection[Any], limit: int | None = None) -> int:
        """Publish the next events and then move the position; return how many."""
        after, head = self._position_and_head(conn)
        self._set(head=max(head, after))  # current while Redis is away, too
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (after, limit or self.config.relay_batch),
        ).fetchall()
        if rows:
            messages = [self._message(row) for row in rows]
            traced = ((int(f["position"]), f["type"], meta) for f, meta in messages)
            try:
                with tracing.event_spans("publish events", self.name, traced):
                    self.publish([fields for fields, _ in messages])
                    last = int(rows[-1][0])
                    self.commit_position(conn, after, last)
            except RedisLostData:
                # Checked in the same script call as the batch, so no batch ever
                # lands in a stream that lost what came before it.
                self.redis_data_losses += 1
                metrics.RELAY_REDIS_DATA_LOSSES.inc()
                self.reconcile(conn)
                return self.publish_batch(conn, limit)
            after = last
        self._set(position=after, head=max(head, after), failing_since=None)
        return len(rows)

    def catch_up(self, conn: psycopg.Connection[Any]) -> int:
        """Publish until the log is exhausted; return how many events were read.

        As the live loop does: an event no message can be made of is retried,
        then dead-lettered.
        """
        policy = RetryPolicy(self.retry_attempts, self.retry_base_s, self.retry_cap_s)
        return FollowerLoop(self, batch_size=self.config.relay_batch, policy=policy).catch_up(conn)

    def message_fields(self, row: Sequence[Any]) -> dict[str, str]:
        """A log row as the message fields the bus documents."""
        return self._message(row)[0]

    def _message(self, row: Sequence[Any]) -> tuple[dict[str, str], dict[str, Any]]:
        """A log row's message fields, and its event's metadata."""
        position, originator_id, version, topic, state = row
        event: Any = decode_event(self.app.mapper, originator_id, version, topic, state)
        meta = getattr(event, "meta", None) or {}
        attributes = {k: v for k, v in vars(event).items() if k not in _ENVELOPE}
        sealed = sorted(name for name, value in attributes.items() if is_sealed(value))
        if sealed:
            # Payload-free: no ciphertext leaves the database for Redis, where
            # nothing could erase it; consumers read payloads through the API.
            attributes = {k: v for k, v in attributes.items() if k not in sealed}
            attributes["sealed_fields"] = sealed
        return {
            "position": str(position),
            "aggregate_id": str(originator_id),
            "version": str(version),
            "type": event_type(event),
            "timestamp": event.timestamp.isoformat(),
            "org_id": str(meta.get("org_id") or ""),
            "actor": str(meta.get("actor") or ""),
            "correlation_id": str(meta.get("correlation_id") or ""),
            "data": _data_json(attributes),
        }, meta

    def publish(self, messages: Sequence[dict[str, str]]) -> None:
        """``XADD`` each message to its organisation's stream and the all-events stream.

        The whole batch goes as one script call (see ``_PUBLISH_SCRIPT``) and
        returns once Redis ran every ``XADD``. Entries Redis already holds are
        refused, and counted in ``already_published``.
        """
        batch = []
        for fields in messages:
            streams = [self.all_events]
            if fields["org_id"]:
                streams.insert(0, events_stream(self.config.prefix, fields["org_id"]))
            flat = [part for pair in fields.items() for part in pair]
            batch.append((entry_id(int(fields["position"])), streams, flat))
        refused, holds = self._publish_script(
            args=[
                self.config.stream_maxlen,
                orjson.dumps(batch),
                self._published_through,
                self.all_events,
            ]
        )
        if int(refused) < 0:
            raise RedisLostData(int(holds), self._published_through)
        self.already_published += int(refused)
        if batch:
            self._published_through = int(messages[-1]["position"])

    def commit_position(self, conn: psycopg.Connection[Any], after: int, last: int) -> None:
        moved = conn.execute(
            "UPDATE projection_tracking SET position = %s, updated_at = now() "
            "WHERE name = %s AND position = %s",
            (last, self.name, after),
        )
        if moved.rowcount != 1:
            raise RuntimeError(f"relay position {self.name!r} moved away from {after}")

    def reconcile(self, conn: psycopg.Connection[Any]) -> None:
        """Publish again what Redis lost; refuse to run over a stream ahead of the log."""
        position, head = self._position_and_head(conn)
        self._set(head=head)
        published = self._published_up_to()
        if published > head:
            raise RelayConflict(
                f"Redis stream {self.all_events!r} holds position {published}, beyond the "
                f"log's head {head}: another deployment on prefix {self.config.prefix!r}, or "
                "a log restored from an older backup? Delete the streams or change the prefix."
            )
        self._published_through = published
        if published < position:
            # Older events would be trimmed again at once: the streams keep about maxlen.
            resume = max(published, position - self.config.stream_maxlen)
            log.warning(
                "Redis is missing published events (it lost data); publishing them again",
                stream=self.all_events,
                redis_last_position=published,
                relay_position=position,
                resume_after=resume,
            )
            conn.execute(
                "UPDATE projection_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (resume, self.name),
            )
            position = resume
        self._set(position=position, head=head)

    def _published_up_to(self) -> int:
        """The position of the all-events stream's last entry ever added (0: none)."""
        try:
            info = self.redis.xinfo_stream(self.all_events)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return 0
            raise
        return int(str(info["last-generated-id"]).split("-")[0])

    def _position_and_head(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        row = conn.execute(
            "SELECT position, (SELECT coalesce(max(notification_id), 0) FROM "
            f"{EVENTS_TABLE}) FROM projection_tracking WHERE name = %s",
            (self.name,),
        ).fetchone()
        if row is None:
            raise LookupError(f"no tracking row for the relay {self.name!r}")
        return int(row[0]), int(row[1])

    # -- following (the loop: projections/follower.py) --------------------------------

    def start(self, conn: psycopg.Connection[Any]) -> None:
        self.ensure_tracking(conn)
        self.reconcile(conn)
        self._redis_up()

    def run_batch(self, conn: psycopg.Connection[Any], limit: int) -> int:
        return self.publish_batch(conn, limit)

    def skip(self, conn: psycopg.Connection[Any], error: str, attempts: int) -> int | None:
        """An event no message can be made of: a dead letter, and the relay goes on.

        Its entry id is then missing from the streams (ids only grow, so it
        cannot be added later): a consumer sees the gap in positions, and
        the event stays in the log and in ``dead-letters list``.
        """
        return skip_next(conn, self.name, self.name, error, attempts)

    def active(self, leading: bool) -> None:
        if leading:
            log.info("relay active", name=self.name, prefix=self.config.prefix)
        self._set(active=leading)

    def standing_by(self) -> None:
        # What failed while this instance published (PostgreSQL restarting, a
        # batch) no longer describes it: a standby does no work, and it has
        # just reached PostgreSQL. Redis it checks at readiness (wiring).
        self._set(failing_since=None)

    def failing(self, exc: BaseException) -> None:
        if isinstance(exc, redis.RedisError):
            self._redis_down(exc)
        elif isinstance(exc, psycopg.OperationalError):
            self._failing(f"postgres: {str(exc).strip()}")
        else:
            self._failing(f"{type(exc).__name__}: {exc}")

    def run_forever(self, stop: threading.Event) -> None:
        """Relay live until ``stop`` is set, surviving lost connections to either side."""
        policy = RetryPolicy(self.retry_attempts, self.retry_base_s, self.retry_cap_s)
        loop = FollowerLoop(
            self, batch_size=self.config.relay_batch, poll_s=self.poll_s, policy=policy
        )
        try:
            loop.run_forever(stop)
        finally:
            self.redis.close()

    def _failing(self, error: str) -> None:
        since = self._status.failing_since or datetime.now(UTC)
        self._set(last_error=error, failing_since=since)

    def _redis_down(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        now = datetime.now(UTC)
        down_since = self._status.redis_down_since or now
        if self._status.redis_ok:
            log.warning("relay cannot reach Redis; events wait in the log, retrying", error=error)
        else:
            log.info(
                "relay still waiting for Redis",
                error=error,
                down_s=round((now - down_since).total_seconds(), 1),
            )
        self._set(redis_ok=False, redis_down_since=down_since, last_error=error)

    def redis_reachable(self) -> None:
        """Someone else reached Redis (the readiness check of a relay not publishing)."""
        self._redis_up()

    def _redis_up(self) -> None:
        if not self._status.redis_ok:
            since = self._status.redis_down_since
            down_s = (datetime.now(UTC) - since).total_seconds() if since else 0.0
            log.info("relay reached Redis again", down_s=round(down_s, 1))
        self._set(redis_ok=True, redis_down_since=None)


def _data_json(attributes: dict[str, Any]) -> str:
    """The event's attributes as JSON; never fails on a value the log holds.

    orjson first (fast); it refuses integers beyond 64 bits, which the
    stdlib encoder writes exactly (and NUL and every other character are
    escaped by both). So the bus carries every acknowledged event.
    """
    try:
        return orjson.dumps(attributes, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(attributes, default=str, separators=(",", ":"), ensure_ascii=False)


def _lock_key(name: str) -> str:
    return f"relay:{name}"


def start_relay_in_thread(
    target: PgTarget,
    app: WorkflowApplication,
    redis_url: str,
    config: BusConfig,
    stop: threading.Event,
    **relay_options: Any,
) -> tuple[Relay, threading.Thread]:
    """A relay running in a daemon thread until ``stop``; keep the relay for ``status()``."""
    relay = Relay(app, target, redis_url, config, **relay_options)
    thread = threading.Thread(target=relay.run_forever, args=(stop,), name="relay", daemon=True)
    thread.start()
    return relay, thread


def relay_status(
    conn: psycopg.Connection[Any], redis_url: str, *, name: str = RELAY_NAME
) -> RelayStatus:
    """The relay's state seen from outside it (the CLI): from PostgreSQL and a ping."""
    row = conn.execute(
        "SELECT coalesce((SELECT position FROM projection_tracking WHERE name = %s), 0), "
        f"(SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}), "
        # Whether any session holds the relay's lock: pg_try_advisory_lock(bigint)
        # shows in pg_locks as the key's high and low 32 bits.
        "EXISTS (SELECT 1 FROM pg_locks, (SELECT hashtext(%s)::bigint AS key) AS lock "
        "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = ((lock.key >> 32) & 4294967295)::oid "
        "AND objid = (lock.key & 4294967295)::oid)",
        (name, _lock_key(name)),
    ).fetchone()
    assert row is not None
    position, head, active = int(row[0]), int(row[1]), bool(row[2])
    client = connect(redis_url)
    try:
        client.ping()
        redis_ok, error = True, None
    except redis.RedisError as exc:
        redis_ok, error = False, f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return RelayStatus(
        position=position,
        head=head,
        lag=max(0, head - position),
        redis_ok=redis_ok,
        last_error=error,
        active=active,
    )
