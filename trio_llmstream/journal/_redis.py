"""``RedisJournal``: runs in Redis Streams, shared by every process that uses the same Redis.

Layout. A run has two keys, ``<prefix>:{<run id>}:e``, a Redis Stream holding the entries,
and ``<prefix>:{<run id>}:m``, a hash with ``last`` (the last seq stored), ``end`` and
``endd`` (the terminal entry's seq and data, once there is one: the data recognises a retry of
that very entry), ``cap`` (set when the journal ended the run for exceeding ``max_entries``),
``u`` (the run's metadata, if it was created with some) and ``hb`` (the writer's last
activity, in ms of the *Redis server's* clock, so that processes whose clocks disagree still
agree on idleness).

Redis Cluster. A key's slot is the hash of its first ``{...}``; neither the prefix nor a run id
may contain braces, so that hash tag is exactly the run id: both keys of a run are in one
slot, on one node, and every script declares both in ``KEYS`` (it touches no other key), as a
cluster requires. Different runs spread over the slots. The blocking ``XREAD`` names one key,
so the cluster client sends it to that key's node.

Entries are stream entries whose ID is ``<seq>-0``: reading after a position is ``XRANGE
key (seq+1)-0 +`` and waiting for the next is ``XREAD BLOCK ms STREAMS key <seq>-0``, with no
translation table. Each entry has two fields, ``k`` (``c`` for a chunk, ``e`` for the end) and
``d`` (the wire JSON of ``_entry``).

Every write is one Lua script, so atomic: ``append`` checks the run exists, skips entries
already stored (idempotent retries), refuses a gap and any new entry after a terminal one,
then ``XADD``\\ s (no ``MAXLEN``: a live run is never trimmed; past ``max_entries`` chunks it
stores a ``RunTooLong`` terminal entry instead) and refreshes ``last``, ``hb`` and both keys'
TTL (``PEXPIRE``): a run is forgotten as a whole, ``ttl`` after its last write.
``seal_abandoned`` checks and seals in one script too, so a writer that comes back at that
moment either wins (its write lands first) or finds the run closed.

Errors are translated at one place, :meth:`RedisJournal._call`: connection errors, timeouts
(``command_timeout``, enforced with a trio deadline), "loading" and read-only replies become
``JournalUnavailable`` (retryable); any other Redis error is a ``JournalError``.

Two transports. A single Redis node (``cluster=False``, a ``redis://`` URL without query
options) is spoken to by ``_resp.py``'s ``_RespPool``, a small RESP2 client on trio sockets:
every command is sent and its reply read in the caller's own task, with no other task or queue
in between. That is the hot path (a write is one ``EVALSHA``, a live follower waits in one
``XREAD BLOCK``), and coredis's own machinery (a writer task, a reader task, a request queue
and a pool lock per command, through anyio) costs ~300 µs of CPU per command on a small
machine against ~50 µs for the round trip itself: that was most of a live follower's lag. A
Redis Cluster (slot routing, redirections, topology changes), TLS (``rediss://``), a URL with
query options, or a ``RedisJournal`` built on a caller's coredis client uses coredis for
everything. The Lua scripts, and so every guarantee, are the same on both.

coredis runs on trio through anyio. Its client is an async context manager that owns a task
group for its connections: :func:`open_redis_journal` enters it for the caller, so the
connections live inside the caller's nursery tree. coredis multiplexes ordinary commands
over its pooled connections, but a blocked ``XREAD`` holds a connection for as long as it
waits; so blocking reads get a client (and pool) of their own, and a crowd of waiting
followers can never starve the writers of connections.
"""

from __future__ import annotations

import hashlib
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ._base import Journal, JournalPage, RunInfo, check_meta, check_page, check_run_id
from ._entry import (
    JournalEntry,
    chunk_entry,
    decode_chunk,
    decode_end,
    encode_chunk,
    encode_end,
)
from ._errors import (
    JournalCorrupted,
    JournalError,
    JournalUnavailable,
    RunClosed,
    RunExists,
    RunNotFound,
)
from ._memory import DEFAULT_MAX_ENTRIES, abandoned_end, too_long_end, too_long_error
from ._resp import _pack, _resp_pools, _RespError, _RespPool

if TYPE_CHECKING:
    import coredis
    from coredis.commands.script import Script

__all__ = ["RedisJournal", "open_redis_journal"]

T = TypeVar("T")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: entries, meta. ARGV: ttl_ms[, metadata]. -> 1 created, 0 exists.
_CREATE = _NOW + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'last', 0, 'hb', now)
if #ARGV > 1 then redis.call('HSET', KEYS[2], 'u', ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: entries, meta. ARGV: ttl_ms, max_entries, the RunTooLong end's data ('' when the
# batch cannot exceed max_entries), first seq, the last entry's kind ('c' or 'e': every other
# entry is a chunk), then each entry's data. (One argument per entry, not two: each costs the
# client as much work as a whole chunk's encoding.)
# -> {1, last} stored (or already stored); {-1, 0} no run; {-2, last} gap; {-3, end} closed;
#    {-4, 0} malformed batch (a terminal entry not last); {-5, end} ended, too long (now or
#    before).
_APPEND = _NOW + """
local m = redis.call('HMGET', KEYS[2], 'last', 'end', 'endd', 'cap')
if not m[1] then return {-1, 0} end
local last = tonumber(m[1])
local max = tonumber(ARGV[2])
local first = tonumber(ARGV[4])
local lastkind = ARGV[5]
local n = #ARGV - 5
if m[2] then
  -- Ended: only a retry of entries already stored passes, and at the terminal's seq only
  -- that very terminal (a writer's entry colliding with a seal does not).
  local endseq = tonumber(m[2])
  for i = 0, n - 1 do
    local seq = first + i
    if seq >= endseq and (seq ~= endseq or i ~= n - 1 or lastkind ~= 'e'
                          or ARGV[6 + i] ~= m[3]) then
      if m[4] then return {-5, endseq} end
      return {-3, endseq}
    end
  end
  return {1, last}
end
if first + n - 1 <= last then return {1, last} end
local skip = last + 1 - first
if skip < 0 then return {-2, last} end
local seq = last
local code = 1
for i = skip, n - 1 do
  seq = first + i
  local kind = 'c'
  if i == n - 1 then kind = lastkind end
  local data = ARGV[6 + i]
  if seq > max and (kind == 'c' or seq > max + 1) then
    -- Past the cap: end the run in place of the first entry that does not fit. (Python
    -- passes the end's data whenever a batch reaches past the cap.)
    seq = max + 1
    kind = 'e'
    data = ARGV[3]
    code = -5
    redis.call('HSET', KEYS[2], 'cap', 1)
  end
  redis.call('XADD', KEYS[1], seq .. '-0', 'k', kind, 'd', data)
  if kind == 'e' then
    redis.call('HSET', KEYS[2], 'end', seq, 'endd', data)
    break
  end
end
redis.call('HSET', KEYS[2], 'last', seq, 'hb', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {code, seq}
"""

# KEYS: entries, meta. -> {-1} no run; {1, metadata or false}
_META = """
local m = redis.call('HMGET', KEYS[2], 'last', 'u')
if not m[1] then return {-1} end
return {1, m[2]}
"""

# KEYS: entries, meta. ARGV: ttl_ms. -> 1 done, 0 ended (no-op), -1 no run.
_HEARTBEAT = _NOW + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[2], 'end') == 1 then return 0 end
redis.call('HSET', KEYS[2], 'hb', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: entries, meta. ARGV: start id, count. -> {-1} no run;
#    {1, last, end or -1, idle_ms, first seq or -1, {id, kind, data, id, kind, data, ...}}
# The entries come flat, three values each, rather than as XRANGE's nested [id, [k, kind, d,
# data]]: parsing the reply is most of a catching-up reader's work per entry. An entry whose
# fields are not as the scripts write them comes as kind '?' (reported as corrupted).
_READ = _NOW + """
local m = redis.call('HMGET', KEYS[2], 'last', 'end', 'hb')
if not m[1] then return {-1} end
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local firstseq = -1
if #oldest > 0 then firstseq = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  local n = 0
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
    local f = e[2]
    if #f == 4 and f[1] == 'k' and f[3] == 'd' then
      entries[n + 1], entries[n + 2], entries[n + 3] = e[1], f[2], f[4]
    else
      entries[n + 1], entries[n + 2], entries[n + 3] = e[1], '?', ''
    end
    n = n + 3
  end
end
return {1, tonumber(m[1]), tonumber(m[2] or -1), now - tonumber(m[3]), firstseq, entries}
"""

# KEYS: entries, meta. ARGV: idle limit ms, end data, ttl_ms.
# -> 1 sealed, 0 not (ended already, or not idle long enough), -1 no run.
_SEAL = _NOW + """
local m = redis.call('HMGET', KEYS[2], 'last', 'end', 'hb')
if not m[1] then return -1 end
if m[2] then return 0 end
if now - tonumber(m[3]) < tonumber(ARGV[1]) then return 0 end
local seq = tonumber(m[1]) + 1
redis.call('XADD', KEYS[1], seq .. '-0', 'k', 'e', 'd', ARGV[2])
redis.call('HSET', KEYS[2], 'last', seq, 'end', seq, 'endd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


def _unavailable_types() -> tuple[type[BaseException], ...]:
    from coredis.exceptions import (
        BusyLoadingError,
        ClusterDownError,
        ClusterError,
        ConnectionError,
        ReadOnlyError,
        TryAgainError,
    )

    # Cluster: a slot without a node (failover under way), a slot being migrated (TRYAGAIN)
    # or a cluster that cannot be reached are outages, retried by the recorder and followers.
    return (ConnectionError, BusyLoadingError, ReadOnlyError, ClusterDownError, ClusterError,
            TryAgainError, TimeoutError, OSError)


def _redis_error_type() -> type[BaseException]:
    from coredis.exceptions import RedisError

    return RedisError


def _entry(identifier: bytes | str, fields: Any) -> JournalEntry:
    # fields: a mapping (XREAD through coredis) or a flat [k, v, ...] list (XREAD, RESP).
    try:
        if isinstance(fields, dict):
            kind, data = fields[b"k"], fields[b"d"]
        elif len(fields) == 4 and fields[0] == b"k" and fields[2] == b"d":
            kind, data = fields[1], fields[3]  # as the scripts write them
        else:
            pairs = dict(zip(fields[::2], fields[1::2], strict=True))
            kind, data = pairs[b"k"], pairs[b"d"]
    except (KeyError, ValueError, TypeError) as exc:
        raise JournalCorrupted(f"malformed stream entry {identifier!r}: {exc!r}") from exc
    return _entry_of(identifier, kind, data)


def _entry_of(identifier: bytes | str, kind: bytes, data: bytes) -> JournalEntry:
    if isinstance(identifier, str):
        identifier = identifier.encode()
    try:
        seq = int(identifier.split(b"-", 1)[0])
        if seq < 1:
            raise ValueError("a seq is >= 1")
    except ValueError as exc:
        raise JournalCorrupted(f"malformed stream entry {identifier!r}: {exc!r}") from exc
    if kind == b"c":
        return chunk_entry(seq, decode_chunk(data))
    if kind == b"e":
        return JournalEntry(seq, end=decode_end(data))
    raise JournalCorrupted(f"stream entry {identifier!r} has unknown kind {kind!r}")


class _Lua:
    """A script: its source and SHA1 for the direct transport, coredis's handle for coredis."""

    __slots__ = ("coredis", "sha", "source")

    def __init__(self, client: coredis.Redis[bytes] | coredis.RedisCluster[bytes],
                 source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.coredis: Script[bytes] = client.register_script(source)


class RedisJournal(Journal):
    """A journal in Redis Streams, shared by every process using the same Redis.

    ``client`` is a ``coredis.Redis`` or ``coredis.RedisCluster`` with
    ``decode_responses=False``, already entered (``async with client``) by the caller;
    :func:`open_redis_journal` does both. ``blocking_client``, if given (same requirements),
    serves the followers' blocking reads, so that they cannot take every connection of
    ``client``'s pool from the writers. Keys start with ``prefix``. Each run's keys expire
    ``ttl`` seconds after its last write or heartbeat (``PEXPIRE`` at every write; an ended
    run: after its end). A live run is never trimmed; a run holds at most ``max_entries``
    chunk entries (a write past it ends the run with a ``RunTooLong`` terminal entry and
    raises ``RunTooLong``). Every command is bounded by ``command_timeout`` seconds; a
    blocking read by its wait plus that. Built directly, it sends everything through
    ``client``; :func:`open_redis_journal` gives a single node the faster direct transport
    (see the module docstring).
    """

    def __init__(
        self,
        client: coredis.Redis[bytes] | coredis.RedisCluster[bytes],
        *,
        blocking_client: coredis.Redis[bytes] | coredis.RedisCluster[bytes] | None = None,
        prefix: str = "trio_llmstream",
        ttl: float = 24 * 3600.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        command_timeout: float = 5.0,
    ) -> None:
        if not ttl > 0 or max_entries < 1 or not command_timeout > 0:
            raise ValueError("ttl, max_entries and command_timeout must be positive")
        if any(c in prefix for c in "{} "):
            raise ValueError(f"the key prefix may not contain braces or spaces: {prefix!r}")
        self.client = client
        self.blocking_client = blocking_client or client
        self.prefix = prefix
        self.ttl = ttl
        self.max_entries = max_entries
        self.command_timeout = command_timeout
        self._ttl_ms = max(1, math.ceil(ttl * 1000))
        self._create = _Lua(client, _CREATE)
        self._append = _Lua(client, _APPEND)
        self._heartbeat = _Lua(client, _HEARTBEAT)
        self._read = _Lua(client, _READ)
        self._seal = _Lua(client, _SEAL)
        self._meta = _Lua(client, _META)
        # The direct transport (see the module docstring), set by open_redis_journal for a
        # single node; None: coredis for everything.
        self._resp: _RespPool | None = None
        self._resp_blocking: _RespPool | None = None
        # Connection failures of either transport (the direct one's are OSErrors, trio's
        # broken or closed streams, or a _RespConnectionError, itself a ConnectionError).
        self._unavailable: tuple[type[BaseException], ...] = (
            *_unavailable_types(), trio.BrokenResourceError, trio.ClosedResourceError)
        self._redis_error = _redis_error_type()

    def __repr__(self) -> str:
        return f"RedisJournal({self.client!r}, prefix={self.prefix!r})"

    def keys(self, run_id: str) -> tuple[str, str]:
        """The run's two keys: its entries stream and its meta hash."""
        check_run_id(run_id)
        base = f"{self.prefix}:{{{run_id}}}"
        return f"{base}:e", f"{base}:m"

    async def _call(
        self, run_id: str, what: str, op: Callable[[], Awaitable[T]], limit: float
    ) -> T:
        # The one place where coredis's errors (and our time limit) become journal errors.
        try:
            with trio.move_on_after(limit) as scope:
                return await op()
        except _RespError as exc:
            if exc.transient:
                raise JournalUnavailable(
                    f"Redis unavailable ({what} of run {run_id!r}): {exc}", run_id=run_id
                ) from exc
            raise JournalError(
                f"Redis error ({what} of run {run_id!r}): {exc}", run_id=run_id
            ) from exc
        except self._unavailable as exc:
            raise JournalUnavailable(
                f"Redis unavailable ({what} of run {run_id!r}): {type(exc).__name__}: {exc}",
                run_id=run_id,
            ) from exc
        except self._redis_error as exc:
            raise JournalError(
                f"Redis error ({what} of run {run_id!r}): {type(exc).__name__}: {exc}",
                run_id=run_id,
            ) from exc
        assert scope.cancelled_caught
        raise JournalUnavailable(
            f"Redis did not answer within {limit:g} s ({what} of run {run_id!r})",
            run_id=run_id,
        )

    async def _eval(self, lua: _Lua, keys: tuple[str, str], args: Sequence[Any]) -> Any:
        if self._resp is not None:
            return await self._resp.evalsha(lua.sha, lua.source, keys, args)
        return await lua.coredis(keys=keys, args=args)

    async def ping(self) -> None:
        """Check that Redis answers (``JournalUnavailable`` if not). Cancellation: harmless."""

        async def op() -> Any:
            if self._resp is not None:
                return await self._resp.execute(_pack(["PING"]))
            return await self.client.ping()

        await self._call("-", "ping", op, self.command_timeout)

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(
            f"no run {run_id!r} in Redis (never created, deleted or expired)", run_id=run_id
        )

    async def create_run(self, run_id: str, *, meta: bytes | None = None) -> None:
        """See :meth:`Journal.create_run`: one script, so the metadata is stored atomically
        with the run. Cancellation: the run may or may not exist."""
        keys = self.keys(run_id)
        check_meta(meta)
        args: list[int | bytes] = [self._ttl_ms] if meta is None else [self._ttl_ms, meta]

        async def op() -> Any:
            return await self._eval(self._create, keys, args)

        if await self._call(run_id, "create", op, self.command_timeout) != 1:
            raise RunExists(f"run {run_id!r} already exists", run_id=run_id)

    async def meta(self, run_id: str) -> bytes | None:
        """See :meth:`Journal.meta`. Cancellation: harmless."""
        keys = self.keys(run_id)

        async def op() -> Any:
            return await self._eval(self._meta, keys, [])

        reply = await self._call(run_id, "meta", op, self.command_timeout)
        if int(reply[0]) == -1:
            raise self._not_found(run_id)
        value = reply[1] if len(reply) > 1 else None
        return None if value is None else bytes(value)

    async def append(self, run_id: str, entries: Sequence[JournalEntry]) -> int:
        """See :meth:`Journal.append`. Cancellation: the batch may or may not be stored;
        retrying it is safe."""
        keys = self.keys(run_id)
        if not entries:
            return (await self.info(run_id)).last_seq
        last = entries[-1]
        reaches_past_cap = last.seq > self.max_entries + (0 if last.end is None else 1)
        # The RunTooLong ending, sent only with a batch that may need it.
        too_long = encode_end(too_long_end(run_id, self.max_entries)) if reaches_past_cap else b""
        first = entries[0].seq
        args: list[str | int | bytes] = [self._ttl_ms, self.max_entries, too_long, first,
                                         b"c" if last.end is None else b"e"]
        for i, entry in enumerate(entries):
            chunk_ = entry.chunk
            if chunk_ is not None and entry.seq == first + i:
                args.append(encode_chunk(chunk_))
            elif entry.end is not None and entry is last and entry.seq == first + i:
                args.append(encode_end(entry.end))
            else:
                raise JournalCorrupted(
                    f"run {run_id!r}: a batch holds consecutive entries, a terminal one last",
                    run_id=run_id,
                )

        async def op() -> Any:
            return await self._eval(self._append, keys, args)

        reply = await self._call(run_id, "append", op, self.command_timeout)
        code, value = int(reply[0]), int(reply[1])
        if code == 1:
            return value
        if code == -5:
            raise too_long_error(run_id, value, self.max_entries)
        if code == -1:
            raise self._not_found(run_id)
        if code == -3:
            raise RunClosed(
                f"run {run_id!r} already ended (terminal entry {value})",
                run_id=run_id,
                end_seq=value,
            )
        if code == -2:
            raise JournalCorrupted(
                f"run {run_id!r}: write of seq {entries[0].seq} after {value} would leave a "
                "gap (was the run's data lost, e.g. Redis restarted without persistence?)",
                run_id=run_id,
            )
        raise JournalCorrupted(f"run {run_id!r}: malformed batch", run_id=run_id)

    async def heartbeat(self, run_id: str) -> None:
        """See :meth:`Journal.heartbeat`. Cancellation: harmless."""
        keys = self.keys(run_id)

        async def op() -> Any:
            return await self._eval(self._heartbeat, keys, [self._ttl_ms])

        if await self._call(run_id, "heartbeat", op, self.command_timeout) == -1:
            raise self._not_found(run_id)

    async def _page(self, run_id: str, keys: tuple[str, str], after: int, limit: int) -> (
        JournalPage
    ):
        async def op() -> Any:
            return await self._eval(self._read, keys, [f"{after + 1}-0", max(0, limit)])

        reply = await self._call(run_id, "read", op, self.command_timeout)
        if int(reply[0]) == -1:
            raise self._not_found(run_id)
        _, last, end, idle_ms, first, raw = reply
        last = int(last)
        first = int(first)
        info = RunInfo(
            run_id=run_id,
            last_seq=last,
            end_seq=None if int(end) < 0 else int(end),
            first_seq=last + 1 if first < 0 else first,
            idle=max(0, int(idle_ms)) / 1000,
        )
        page = JournalPage(
            tuple(_entry_of(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)),
            info,
        )
        return check_page(run_id, after, page) if limit > 0 else page

    async def read(
        self, run_id: str, *, after: int = 0, limit: int = 256, wait: float = 0.0
    ) -> JournalPage:
        """See :meth:`Journal.read`: one script call, then, if nothing is there yet and
        ``wait`` > 0, one ``XREAD BLOCK``. Cancellation: stops waiting (coredis drops the
        blocked connection); nothing is consumed."""
        if after < 0:
            raise ValueError("after must be >= 0")
        keys = self.keys(run_id)
        page = await self._page(run_id, keys, after, limit)
        block_ms = int(wait * 1000)
        if page.entries or block_ms < 1 or page.info.ended or limit <= 0:
            return page

        # Wait for anything after the last stored entry: a reader positioned past the end of
        # a run (a client that already had the end) must wake when the end is written too.
        since = min(after, page.info.last_seq)

        async def op() -> Any:
            if self._resp_blocking is not None:
                # [[key, [[id, [field, value, ...]], ...]]], or nil when the wait ran out.
                reply = await self._resp_blocking.execute(_pack(
                    ["XREAD", "COUNT", limit, "BLOCK", block_ms, "STREAMS", keys[0],
                     f"{since}-0"]))
                return [(item[0], item[1]) for item in reply[0][1]] if reply else []
            reply = await self.blocking_client.xread(
                {keys[0]: f"{since}-0"}, count=limit, block=block_ms
            )
            raw = reply.get(keys[0].encode()) if reply else None
            return [(item.identifier, item.field_values) for item in raw or ()]

        raw = await self._call(run_id, "blocking read", op, wait + self.command_timeout)
        entries = tuple(e for e in (_entry(i, f) for i, f in raw) if e.seq > after)
        if not entries:
            # Nothing for us came: look again for the state (how long the run has been idle).
            return await self._page(run_id, keys, after, limit)
        last = entries[-1]
        info = RunInfo(
            run_id=run_id,
            last_seq=max(page.info.last_seq, last.seq),
            end_seq=last.seq if last.end is not None else page.info.end_seq,
            first_seq=page.info.first_seq,
            idle=0.0,
        )
        return check_page(run_id, after, JournalPage(entries, info))

    async def seal_abandoned(self, run_id: str, *, idle_limit: float) -> bool:
        """See :meth:`Journal.seal_abandoned`: check and seal in one script.
        Cancellation: the seal may or may not have been written."""
        keys = self.keys(run_id)
        data = encode_end(abandoned_end(run_id, idle_limit))
        limit_ms = max(0, math.ceil(idle_limit * 1000 - 1e-6))

        async def op() -> Any:
            return await self._eval(self._seal, keys, [limit_ms, data, self._ttl_ms])

        reply = await self._call(run_id, "seal", op, self.command_timeout)
        if reply == -1:
            raise self._not_found(run_id)
        return bool(reply == 1)

    async def delete_run(self, run_id: str) -> None:
        """See :meth:`Journal.delete_run`. Cancellation: the keys may or may not be gone."""
        keys = self.keys(run_id)

        async def op() -> Any:
            if self._resp is not None:
                return await self._resp.execute(_pack(["DEL", *keys]))
            return await self.client.delete(list(keys))

        await self._call(run_id, "delete", op, self.command_timeout)


@asynccontextmanager
async def open_redis_journal(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    prefix: str = "trio_llmstream",
    ttl: float = 24 * 3600.0,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    cluster: bool = False,
    command_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    max_connections: int = 64,
    max_blocking_connections: int = 1024,
) -> AsyncIterator[RedisJournal]:
    """Connect to Redis at ``url`` and yield a :class:`RedisJournal` for the block.

    ``max_entries``: the most chunk entries a run may hold (default 100,000); a write past it
    ends the run with a ``RunTooLong`` terminal entry. Nothing of a live run is ever trimmed;
    a run's keys expire ``ttl`` seconds after its last write or heartbeat (an ended run's:
    after its end).

    ``cluster=True``: ``url`` is any node of a Redis Cluster (``redis://host:port``); the
    clients discover the others and send each run's commands to the node that holds its slot
    (both keys of a run share it: see the module docstring), following redirections when
    slots move. ``max_connections`` and ``max_blocking_connections`` are then totals across
    the nodes.

    A single node (``cluster=False``) at a ``redis://`` or ``rediss://`` URL without query
    options (user, password and database number are read from it) is spoken to directly:
    the journal's commands run in the calling task over its own connections, at most
    ``max_connections`` for ordinary commands and ``max_blocking_connections`` for the
    followers' blocking reads (one per waiting follower; more followers wait their turn,
    which delays them by up to their poll interval). Two coredis clients (and their
    connection tasks) live for the block too, inside the caller's task tree: ``client``
    for the caller's own commands and the relay's, and, for a cluster or another URL, every
    command of the journal, with the same two limits. Leaving the block closes every
    connection. Connecting is lazy: an unreachable Redis shows as ``JournalUnavailable``
    from the first operation.
    An exception from the block propagates unchanged (not wrapped in an ExceptionGroup by
    coredis's task group).

    Cancellation: leaving the block by cancellation closes the connections and propagates.
    """
    try:
        import coredis
        from coredis.retry import NoRetryPolicy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "RedisJournal needs coredis: pip install 'trio_llmstream[redis]'"
        ) from exc
    # No retries inside coredis: the recorder and followers retry, knowing what is safe.
    client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]
    blocking: coredis.Redis[bytes] | coredis.RedisCluster[bytes]
    if cluster:
        # The startup node given explicitly: coredis 6.9's from_url would otherwise pass it
        # in a deprecated form and warn (DeprecationWarning) at every client made.
        from coredis.connection import TCPLocation

        parts = urllib.parse.urlsplit(url)
        start = [TCPLocation(parts.hostname or "127.0.0.1", parts.port or 6379)]
        client = coredis.RedisCluster.from_url(
            url, decode_responses=False, retry_policy=NoRetryPolicy(), startup_nodes=start,
            connect_timeout=connect_timeout, max_connections=max_connections,
        )
        blocking = coredis.RedisCluster.from_url(
            url, decode_responses=False, retry_policy=NoRetryPolicy(), startup_nodes=start,
            connect_timeout=connect_timeout, max_connections=max_blocking_connections,
        )
    else:
        client = coredis.Redis.from_url(
            url, decode_responses=False, retry_policy=NoRetryPolicy(),
            connect_timeout=connect_timeout, max_connections=max_connections,
        )
        blocking = coredis.Redis.from_url(
            url, decode_responses=False, retry_policy=NoRetryPolicy(),
            connect_timeout=connect_timeout, max_connections=max_blocking_connections,
        )
    journal = RedisJournal(
        client,
        blocking_client=blocking,
        prefix=prefix,
        ttl=ttl,
        max_entries=max_entries,
        command_timeout=command_timeout,
    )
    pools = None if cluster else _resp_pools(url, connect_timeout, max_connections,
                                             max_blocking_connections)
    if pools is not None:
        journal._resp, journal._resp_blocking = pools
    body_exc: BaseException | None = None
    async with client, blocking:
        try:
            yield journal
        except BaseException as exc:
            body_exc = exc
        finally:
            if pools is not None:
                with trio.CancelScope(shield=True):
                    for pool in pools:
                        await pool.aclose()
    if body_exc is not None:
        try:
            raise body_exc
        finally:
            body_exc = None
