"""What every Lua script of the Redis queue shares: the names of its keys, the helpers that move
a request between the queue's structures (load, unqueue, enlist, lease, uncall...), and the
templating that writes Python's status names and sizes into the Lua source.

The scripts themselves, one per state change, are in `redis_scripts`.
"""

from __future__ import annotations

from string import Template

from lps_server.core.domain import RequestStatus
from lps_server.queue.redis_keys import MEMBER_SEQ_DIGITS

# At most this many wake tokens wait in the list: enough to wake every idle replica's dispatcher
# after a burst, few enough that tokens left over (nobody was idle) cost only a few empty leases.
WAKE_TOKENS_MAX = 64
# Retries that became due are moved back into the queue by leases and sweeps, at most this many
# per call, so one call never does unbounded work.
PROMOTE_MAX = 256

PRELUDE = """
local pending, leases, deadlines, enqueued, wake, meta, delayed =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local req_prefix, group_prefix, ended_prefix, chan_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- A queue member is '<seq>:<request id>'; the id starts after the sequence and the colon.
local ID_AT = $id_at

local function rid_of(member)
  return string.sub(member, ID_AT)
end

local function load(rid)
  local v = redis.call('HMGET', req_prefix .. rid, 'status', 'member', 'score', 'group',
    'deadline', 'bytes', 'enqueued_at', 'provider', 'lease', 'attempts', 'called')
  if not v[1] then return nil end
  return {status = v[1], member = v[2], score = v[3], group = v[4], deadline = v[5],
          bytes = tonumber(v[6]) or 0, enqueued_at = v[7], provider = v[8], lease = v[9] or '',
          attempts = tonumber(v[10]) or 0, called = v[11] ~= false}
end

-- A provider call went out for a request that goes back to the queue without its result (its
-- holder died, stalled past its lease or gave up mid-call): that call counts as a failed
-- attempt, so the request is retried to the end, never ended EXPIRED although it was paid for.
local function uncall(rid, r)
  if r.called then
    redis.call('HDEL', req_prefix .. rid, 'called')
    r.attempts = redis.call('HINCRBY', req_prefix .. rid, 'attempts', 1)
    r.called = false
  end
end

-- The TTL bounds the wait before the first provider call only: once a request has cost a call
-- (a failed attempt), it is retried to the end however late, never ended EXPIRED.
local function expires(r)
  return r.deadline ~= '' and r.attempts == 0
end

local function is_final(status)
  return status == '$completed' or status == '$failed' or status == '$expired'
end

-- The queued requests of one provider, in queue order: a lease can skip providers with no room.
-- (Requests queued by a release before this one have no provider and are found in `pending`.)
local function by_provider(provider)
  return pending .. ':' .. provider
end

-- Take a queued request out of every queue structure and free its bytes.
local function unqueue(rid, r)
  redis.call('ZREM', pending, r.member)
  redis.call('ZREM', group_prefix .. r.group, r.member)
  if r.provider then redis.call('ZREM', by_provider(r.provider), r.member) end
  redis.call('ZREM', delayed, rid)
  redis.call('ZREM', deadlines, rid)
  redis.call('ZREM', enqueued, rid)
  redis.call('HINCRBY', meta, 'bytes', -r.bytes)
end

-- Count a request as queued: its TTL, its age, its bytes and its status.
local function hold(rid, r)
  if expires(r) then redis.call('ZADD', deadlines, r.deadline, rid) end
  redis.call('ZADD', enqueued, r.enqueued_at, rid)
  redis.call('HINCRBY', meta, 'bytes', r.bytes)
  redis.call('HSET', req_prefix .. rid, 'status', '$queued')
end

-- Put a queued request where leases find it, under its original score and member: released,
-- reclaimed and retried work goes back to exactly the place it had, never behind newer work.
local function enlist(r)
  redis.call('ZADD', pending, r.score, r.member)
  redis.call('ZADD', group_prefix .. r.group, r.score, r.member)
  if r.provider then redis.call('ZADD', by_provider(r.provider), r.score, r.member) end
end

local function requeue(rid, r)
  enlist(r)
  hold(rid, r)
end

-- Lease one request under `token`; returns its payload and its count of failed attempts.
local function lease_one(rid, lease_deadline, token)
  local key = req_prefix .. rid
  redis.call('ZADD', leases, lease_deadline, rid)
  redis.call('HSET', key, 'status', '$processing', 'lease', token)
  return redis.call('HMGET', key, 'payload', 'attempts')
end

-- Forget a lease: the request is no longer held by anyone.
local function unlease(rid)
  redis.call('ZREM', leases, rid)
  redis.call('HDEL', req_prefix .. rid, 'lease')
end

-- Move retries whose time has come back into the queue at their place; returns how many.
local function promote_due(now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, $promote_max)
  for _, rid in ipairs(due) do
    redis.call('ZREM', delayed, rid)
    local r = load(rid)
    if r and r.status == '$queued' then enlist(r) end
  end
  return #due
end

-- When the earliest waiting retry becomes due, or '' when none waits.
local function next_due()
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return first[2] or ''
end

local function wake_up(n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, $wake_max) do tokens[i] = '1' end
  redis.call('LPUSH', wake, unpack(tokens))
  redis.call('LTRIM', wake, 0, $wake_max - 1)
end
"""


def lua(body: str) -> str:
    """The script `body` after the shared prelude, with the names and sizes written in."""
    # Status names and sizes come from the Python definitions, so the two cannot drift apart.
    return Template(PRELUDE + body).substitute(
        id_at=MEMBER_SEQ_DIGITS + 2,
        seq_digits=MEMBER_SEQ_DIGITS,
        wake_max=WAKE_TOKENS_MAX,
        promote_max=PROMOTE_MAX,
        **{s.name.lower(): s.value for s in RequestStatus},
    )
