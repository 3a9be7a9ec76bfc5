"""Rate budgets in Redis, shared by every replica: one atomic script per acquire and per settle.

Keys sit under the queue's hash tag (`{<prefix>}:budget:<provider>:<model>` and its `:log`), so a
Redis Cluster keeps them in the queue's slot. The scripts read the time from Redis (`TIME`), so
every replica's grants are stamped by one clock. See `budgets/base.py` for the rules.

* `{p}:budget:<scope>`     hash: `ur ut ui uo` (what the log holds, per kind), `lr lt li lo`
                            (limits learned from the provider) and `l_at` (when last
                            announced), `rr rt ri ro` and `r_at` (the
                            ratios of the provider's count to ours, and when they were told),
                            `blocked_until` (ms of Redis time)
* `{p}:budget:<scope>:log` zset of entries `<id>|<requests>|<tokens>|<input>|<output>` by the
                            time they count from (ms)
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from string import Template
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lps_server.budgets.base import (
    MIN_WAIT_S,
    RATIO_RANGE,
    RATIO_WEIGHT,
    RATIO_WINDOWS,
    STATE_TTL_S,
    BudgetState,
    BudgetUnavailableError,
    Decision,
    Grant,
    Settlement,
    span,
)
from lps_server.core.rates import RateCounts

T = TypeVar("T")
# Entries a denial reads to find when enough of the window has passed; past them it waits a
# whole window (only when one call asks for more than this many grants freed).
WAIT_WALK = 1000

_PRELUDE = """
local state, log = KEYS[1], KEYS[2]
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local K = {'r', 't', 'i', 'o'}

local function counts(name)
  local v = {}
  for n in string.gmatch(name, '|(%-?%d+)') do v[#v + 1] = tonumber(n) end
  return v
end

local function bump(v, sign)
  for k = 1, 4 do
    if v[k] ~= 0 then redis.call('HINCRBY', state, 'u' .. K[k], sign * v[k]) end
  end
end

-- Entries that left the window no longer count.
local function prune()
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  for _, name in ipairs(old) do bump(counts(name), -1) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window) end
end

local function used()
  local v = redis.call('HMGET', state, 'ur', 'ut', 'ui', 'uo')
  for k = 1, 4 do v[k] = math.max(0, tonumber(v[k]) or 0) end
  return v
end

-- Until when the limits learned from the provider are in force: RATIO_WINDOWS windows after
-- it last announced one (a limit lowered for a while must not bind for ever).
local function learned_until()
  return (tonumber(redis.call('HGET', state, 'l_at')) or 0) + $ratio_windows * window
end

-- The tighter of the configured limit (ARGV[2..5]) and the learned one, per kind; 0 = none.
local function limits()
  local learned = {0, 0, 0, 0}
  if learned_until() > now then learned = redis.call('HMGET', state, 'lr', 'lt', 'li', 'lo') end
  local v = {}
  for k = 1, 4 do
    local a, b = tonumber(ARGV[1 + k]) or 0, tonumber(learned[k]) or 0
    if a > 0 and b > 0 then v[k] = math.min(a, b) else v[k] = math.max(a, b) end
  end
  return v
end

local function add(name)
  redis.call('ZADD', log, now, name)
  bump(counts(name), 1)
end

local function keep()
  redis.call('PEXPIRE', log, window + 60000)
  redis.call('PEXPIRE', state, $state_ttl_ms)
end

local function reply(code, wait, u, lim)
  return {code, wait, u[1], u[2], u[3], u[4], lim[1], lim[2], lim[3], lim[4]}
end
"""

# ARGV: span_ms, limits[4], need[4], grant id, walk, window_ms. Answers reply(code, wait_ms):
# code 1 granted (followed by what the provider's exact window holds of ours, with the grant),
# 0 wait, 2 never (the call asks more than a configured limit).
_ACQUIRE = """
local need = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local grant, walk, exact = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
prune()
local u, lim = used(), limits()
local blocked = tonumber(redis.call('HGET', state, 'blocked_until')) or 0
if blocked > now then return reply(0, blocked - now, u, lim) end
for k = 1, 4 do
  local configured = tonumber(ARGV[1 + k]) or 0
  if configured > 0 and need[k] > configured then return reply(2, 0, u, lim) end
end
-- More than only a learned limit: the call waits until that limit is forgotten, then tries.
for k = 1, 4 do
  if lim[k] > 0 and need[k] > lim[k] then
    return reply(0, math.max(1, learned_until() - now), u, lim)
  end
end
-- While the provider counts more than we do, only the limit divided by the ratio is granted.
local r_at = tonumber(redis.call('HGET', state, 'r_at'))
local fresh_until = (r_at or 0) + $ratio_windows * window
local fresh = r_at ~= nil and fresh_until > now
local ratios = redis.call('HMGET', state, 'rr', 'rt', 'ri', 'ro')
local room = {}
for k = 1, 4 do
  room[k] = lim[k]
  local ratio = tonumber(ratios[k]) or 1
  if fresh and lim[k] > 0 and ratio > 1 then
    room[k] = math.max(1, math.floor(lim[k] / ratio))
  end
end
local wait = 0
for k = 1, 4 do
  local excess = u[k] + need[k] - room[k]
  if room[k] > 0 and excess > 0 then
    local entries = redis.call('ZRANGE', log, 0, walk - 1, 'WITHSCORES')
    local freed, w = 0, window
    for j = 1, #entries, 2 do
      freed = freed + counts(entries[j])[k]
      if freed >= excess then
        w = tonumber(entries[j + 1]) + window - now
        break
      end
    end
    wait = math.max(wait, w)
  end
end
if wait > 0 then
  if fresh then wait = math.min(wait, fresh_until - now) end
  return reply(0, math.max(1, wait), u, lim)
end
add(grant .. '|' .. need[1] .. '|' .. need[2] .. '|' .. need[3] .. '|' .. need[4])
keep()
-- What the provider's own window holds of ours: the log less its margin's entries.
local seen = used()
for _, name in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', now - exact)) do
  local v = counts(name)
  for k = 1, 4 do seen[k] = seen[k] - v[k] end
end
local out = reply(1, 0, used(), lim)
for k = 1, 4 do out[#out + 1] = seen[k] end
return out
"""

# ARGV: span_ms, limits[4], grant's entry, its new entry, learned[4] (0 none), the provider's
# count of its window[4] (-1 unknown), what the window held with the grant[4], block_ms.
_SETTLE = """
local old, new = ARGV[6], ARGV[7]
prune()
-- The provider's count replaces the estimate, from the grant's own time on.
local stamp = redis.call('ZSCORE', log, old)
if stamp then
  redis.call('ZREM', log, old)
  bump(counts(old), -1)
  redis.call('ZADD', log, stamp, new)
  bump(counts(new), 1)
end
for k = 1, 4 do
  local learned = tonumber(ARGV[7 + k])
  if learned > 0 then redis.call('HSET', state, 'l' .. K[k], learned, 'l_at', now) end
end
-- The provider's count as a ratio to ours (`Settlement.ratios` says why): to the window at
-- the grant, once it holds more than the whole log (everything granted up to now, margins too);
-- else 1 (it counts no more than we granted).
local now_seen, ratios, told = used(), {}, false
for k = 1, 4 do
  local theirs, granted = tonumber(ARGV[11 + k]), tonumber(ARGV[15 + k])
  ratios[k] = 0
  if theirs >= 0 and granted > 0 then
    told = true
    ratios[k] = 1
    if theirs > math.max(granted, now_seen[k]) then ratios[k] = theirs / granted end
  end
end
if told then
  local r_at = tonumber(redis.call('HGET', state, 'r_at'))
  local fresh = r_at ~= nil and r_at + $ratio_windows * window > now
  local old = redis.call('HMGET', state, 'rr', 'rt', 'ri', 'ro')
  for k = 1, 4 do
    local before = fresh and (tonumber(old[k]) or 0) or 0
    local news = ratios[k]
    local value = before
    if news > 0 then
      value = news
      if before > 0 then value = $ratio_weight * news + (1 - $ratio_weight) * before end
      value = math.min(math.max(value, $ratio_low), $ratio_high)
    elseif before == 0 then
      value = $ratio_low
    end
    redis.call('HSET', state, 'r' .. K[k], tostring(value))
  end
  redis.call('HSET', state, 'r_at', now)
end
local block = tonumber(ARGV[20])
if block > 0 then
  local blocked = tonumber(redis.call('HGET', state, 'blocked_until')) or 0
  redis.call('HSET', state, 'blocked_until', math.max(blocked, now + block))
end
keep()
return reply(1, 0, used(), limits())
"""


def _lua(body: str) -> str:
    return Template(_PRELUDE + body).substitute(
        state_ttl_ms=int(STATE_TTL_S * 1000),
        ratio_windows=RATIO_WINDOWS,
        ratio_weight=RATIO_WEIGHT,
        ratio_low=RATIO_RANGE[0],
        ratio_high=RATIO_RANGE[1],
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _state(reply: list[Any]) -> BudgetState:
    values = [int(v) for v in reply[2:10]]
    return BudgetState(RateCounts.of(values[:4]), RateCounts.of(values[4:]))


class RedisBudgetStore:
    """A BudgetStore in Redis under the queue's prefix, shared by every replica using it.

    Args:
        client: a redis.asyncio client.
        prefix: the queue's key prefix (its hash tag).
    """

    def __init__(self, *, client: Redis, prefix: str = "lps") -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"redis prefix {prefix!r} must be non-empty and brace-free")
        self._client = client
        self._tag = "{" + prefix + "}"
        self._acquire = client.register_script(_lua(_ACQUIRE))
        self._settle = client.register_script(_lua(_SETTLE))
        kwargs = client.connection_pool.connection_kwargs
        self._address = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"

    def keys(self, scope: str) -> list[str]:
        """The state hash and the log of one budget."""
        state = f"{self._tag}:budget:{scope}"
        return [state, state + ":log"]

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BudgetUnavailableError(f"redis at {self._address} unreachable: {exc}") from exc
        except RedisError as exc:
            raise BudgetUnavailableError(f"redis at {self._address} failed: {exc}") from exc

    async def acquire(
        self, scope: str, *, need: RateCounts, limits: RateCounts, window_s: float
    ) -> Decision:
        """See BudgetStore.acquire."""
        grant_id = uuid.uuid4().hex
        args: list[str | int] = [
            _ms(span(window_s)),
            *limits.values(),
            *need.values(),
            grant_id,
            WAIT_WALK,
            _ms(window_s),
        ]
        reply = await self._call(lambda: self._acquire(keys=self.keys(scope), args=args))
        code, wait_ms, state = int(reply[0]), int(reply[1]), _state(reply)
        if code == 1:
            seen = RateCounts.of([int(v) for v in reply[10:14]])
            return Decision(state, grant=Grant(scope, grant_id, need, seen=seen))
        if code == 2:
            return Decision(state, never=tuple(need.exceeds(state.limits)))
        return Decision(state, wait_s=max(MIN_WAIT_S, wait_ms / 1000))

    async def settle(
        self, grant: Grant, settlement: Settlement, *, limits: RateCounts, window_s: float
    ) -> BudgetState:
        """See BudgetStore.settle."""
        new = Grant(grant.scope, grant.grant_id, settlement.counted).member
        block = settlement.block_s()
        args: list[str | int] = [
            _ms(span(window_s)),
            *limits.values(),
            grant.member,
            new,
            *settlement.learned().values(),
            *settlement.provider_used(),
            *grant.seen.values(),
            _ms(block) if block > 0 else 0,
        ]
        reply = await self._call(lambda: self._settle(keys=self.keys(grant.scope), args=args))
        return _state(reply)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()
