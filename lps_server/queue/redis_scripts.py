"""The Redis queue's Lua scripts: every state change of a request is one atomic script call.

Atomicity is what makes the queue safe across replicas: a request id is created once however many
replicas submit it, a queued request is leased by exactly one replica, and a result is stored and
published by the first completion only. Each script also takes many requests per call, so a
streamed message of N requests, a bundle's results or a sweep is one round trip.

Every script gets the same KEYS (`QueueKeys.script_keys()`) and ARGV[1..4] (the key prefixes of
requests, groups, end states and channels); its own arguments start at ARGV[5]. Scores, deadlines
and times travel as the strings Python wrote (`repr` of a float), so a request goes back into the
queue at exactly its original score. Lua only reads numbers to compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from lps_server.core.domain import RequestStatus
from lps_server.queue.redis_keys import MEMBER_SEQ_DIGITS

# At most this many wake tokens wait in the list: enough to wake every idle replica's dispatcher
# after a burst, few enough that tokens left over (nobody was idle) cost only a few empty leases.
WAKE_TOKENS_MAX = 64

_PRELUDE = """
local pending, leases, deadlines, enqueued, wake, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local req_prefix, group_prefix, ended_prefix, chan_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- A queue member is '<seq>:<request id>'; the id starts after the sequence and the colon.
local ID_AT = $id_at

local function rid_of(member)
  return string.sub(member, ID_AT)
end

local function load(rid)
  local v = redis.call('HMGET', req_prefix .. rid,
    'status', 'member', 'score', 'group', 'deadline', 'bytes', 'enqueued_at')
  if not v[1] then return nil end
  return {status = v[1], member = v[2], score = v[3], group = v[4], deadline = v[5],
          bytes = tonumber(v[6]), enqueued_at = v[7]}
end

local function is_final(status)
  return status == '$completed' or status == '$failed' or status == '$expired'
end

-- Take a queued request out of every queue structure and free its bytes.
local function unqueue(rid, r)
  redis.call('ZREM', pending, r.member)
  redis.call('ZREM', group_prefix .. r.group, r.member)
  redis.call('ZREM', deadlines, rid)
  redis.call('ZREM', enqueued, rid)
  redis.call('HINCRBY', meta, 'bytes', -r.bytes)
end

-- (Re)queue a request under its original score and member: released and reclaimed work goes
-- back to exactly the place it had, never behind newer work.
local function requeue(rid, r)
  redis.call('ZADD', pending, r.score, r.member)
  redis.call('ZADD', group_prefix .. r.group, r.score, r.member)
  if r.deadline ~= '' then redis.call('ZADD', deadlines, r.deadline, rid) end
  redis.call('ZADD', enqueued, r.enqueued_at, rid)
  redis.call('HINCRBY', meta, 'bytes', r.bytes)
  redis.call('HSET', req_prefix .. rid, 'status', '$queued')
end

local function lease_one(rid, lease_deadline)
  redis.call('ZADD', leases, lease_deadline, rid)
  redis.call('HSET', req_prefix .. rid, 'status', '$processing')
  return redis.call('HGET', req_prefix .. rid, 'payload')
end

local function wake_up(n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, $wake_max) do tokens[i] = '1' end
  redis.call('LPUSH', wake, unpack(tokens))
  redis.call('LTRIM', wake, 0, $wake_max - 1)
end
"""

# ARGV[5] max_size, ARGV[6] max_bytes, then per request 7 values: id, payload, score, group,
# deadline ('' for none), bytes, enqueued_at. Returns per request 'new', 'full' or the status
# of the earlier submission with that id.
_SUBMIT = """
local max_size, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local size = redis.call('ZCARD', pending)
local used = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local out, created = {}, 0
for i = 7, #ARGV, 7 do
  local rid, bytes = ARGV[i], tonumber(ARGV[i + 5])
  local known = redis.call('HGET', req_prefix .. rid, 'status')
  if known then
    out[#out + 1] = known
  elseif size >= max_size or used + bytes > max_bytes then
    out[#out + 1] = 'full'
  else
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    local r = {member = string.format('%0${seq_digits}d', seq) .. ':' .. rid,
               score = ARGV[i + 2], group = ARGV[i + 3], deadline = ARGV[i + 4],
               bytes = bytes, enqueued_at = ARGV[i + 6]}
    redis.call('HSET', req_prefix .. rid, 'payload', ARGV[i + 1], 'member', r.member,
      'score', r.score, 'group', r.group, 'deadline', r.deadline, 'bytes', ARGV[i + 5],
      'enqueued_at', r.enqueued_at)
    requeue(rid, r)
    size, used, created = size + 1, used + bytes, created + 1
    out[#out + 1] = 'new'
  end
end
wake_up(created)
return out
"""

# ARGV[5] lease deadline, ARGV[6] now, ARGV[7] group ('' = the head's), ARGV[8] max items,
# ARGV[9] most expired requests to take in one call. Returns {group, n, n item payloads, expired
# payloads}, or {''} when nothing is queued. Expired ones are leased too, so that a replica dying
# before it ends them leaves them to be reclaimed (and found expired again), not lost.
_LEASE = """
local lease_deadline, now = ARGV[5], tonumber(ARGV[6])
local group, max_items, max_expired = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
while group == '' do
  local head = redis.call('ZRANGE', pending, 0, 0)
  if #head == 0 then return {''} end
  group = redis.call('HGET', req_prefix .. rid_of(head[1]), 'group') or ''
  if group == '' then redis.call('ZREM', pending, head[1]) end
end
local limit = math.min(max_items, tonumber(string.match(group, '^(%d+):') or '1'))
local gkey = group_prefix .. group
local items, expired = {}, {}
while #items < limit and #expired < max_expired do
  local batch = redis.call('ZRANGE', gkey, 0, limit - #items - 1)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    local rid = rid_of(member)
    local r = load(rid)
    if r then
      unqueue(rid, r)
      local payload = lease_one(rid, lease_deadline)
      if r.deadline ~= '' and tonumber(r.deadline) <= now then
        expired[#expired + 1] = payload
      else
        items[#items + 1] = payload
      end
    else
      redis.call('ZREM', gkey, member)
      redis.call('ZREM', pending, member)
    end
  end
end
local out = {group, tostring(#items)}
for _, p in ipairs(items) do out[#out + 1] = p end
for _, p in ipairs(expired) do out[#out + 1] = p end
return out
"""

# ARGV[5] retention in ms, ARGV[6] approximate channel length cap, ARGV[7] reply channel TTL in
# ms, then per result 6 values: id, status, encoded result, completed_at, result channel, reply
# channel ('' for none). Returns 1 where this call stored the result, 0 where the request had
# ended already or is unknown. A reply channel serves one streaming call, so it expires soon after
# its last result instead of after the retention.
_COMPLETE = """
local retention_ms, maxlen, reply_ttl_ms = ARGV[5], ARGV[6], ARGV[7]
local function publish(channel, result, ttl_ms)
  if channel == '' then return end
  local ckey = chan_prefix .. channel
  redis.call('XADD', ckey, 'MAXLEN', '~', maxlen, '*', 'r', result)
  redis.call('PEXPIRE', ckey, ttl_ms)
end
local out = {}
for i = 8, #ARGV, 6 do
  local rid, status, result, completed_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local r = load(rid)
  if not r or is_final(r.status) then
    out[#out + 1] = 0
  else
    if r.status == '$queued' then unqueue(rid, r) end
    redis.call('ZREM', leases, rid)
    local key = req_prefix .. rid
    -- The payload (essay texts) is not needed once ended; only the result is retained.
    redis.call('HDEL', key, 'payload')
    redis.call('HSET', key, 'status', status, 'result', result)
    redis.call('PEXPIRE', key, retention_ms)
    redis.call('ZADD', ended_prefix .. status, completed_at, rid)
    publish(ARGV[i + 4], result, retention_ms)
    publish(ARGV[i + 5], result, reply_ttl_ms)
    out[#out + 1] = 1
  end
end
return out
"""

# ARGV[5..] request ids. Returns how many went back to the queue.
_RELEASE = """
local n = 0
for i = 5, #ARGV do
  local rid = ARGV[i]
  local r = load(rid)
  if r and r.status == '$processing' then
    redis.call('ZREM', leases, rid)
    requeue(rid, r)
    n = n + 1
  end
end
wake_up(n)
return n
"""

# ARGV[5] new lease deadline, ARGV[6..] request ids; only ids still leased are touched.
_EXTEND = """
local n = 0
for i = 6, #ARGV do
  n = n + redis.call('ZADD', leases, 'XX', 'CH', ARGV[5], ARGV[i])
end
return n
"""

# ARGV[5] now, ARGV[6] lease deadline for the expired ones it takes, ARGV[7] end-state cutoff
# (ended before it are forgotten), ARGV[8] most requests per step. Returns {reclaimed, expired
# payloads...}. Work per call is bounded so one sweep never stalls Redis; the next sweep goes on.
_SWEEP = """
local now, lease_deadline, ended_before = ARGV[5], ARGV[6], ARGV[7]
local batch = tonumber(ARGV[8])
local reclaimed = 0
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, batch)) do
  redis.call('ZREM', leases, rid)
  local r = load(rid)
  if r and r.status == '$processing' then
    requeue(rid, r)
    reclaimed = reclaimed + 1
  end
end
wake_up(reclaimed)
local out = {reclaimed}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, batch)) do
  local r = load(rid)
  if r and r.status == '$queued' then
    unqueue(rid, r)
    out[#out + 1] = lease_one(rid, lease_deadline)
  else
    redis.call('ZREM', deadlines, rid)
  end
end
for _, status in ipairs({'$completed', '$failed', '$expired'}) do
  redis.call('ZREMRANGEBYSCORE', ended_prefix .. status, '-inf', '(' .. ended_before)
end
return out
"""


def _lua(body: str) -> str:
    # Status names and sizes come from the Python definitions, so the two cannot drift apart.
    return Template(_PRELUDE + body).substitute(
        id_at=MEMBER_SEQ_DIGITS + 2,
        seq_digits=MEMBER_SEQ_DIGITS,
        wake_max=WAKE_TOKENS_MAX,
        **{s.name.lower(): s.value for s in RequestStatus},
    )


@dataclass(frozen=True, slots=True)
class QueueScripts:
    """The queue's scripts, registered on one client.

    A `Script` runs by SHA and loads itself again on NOSCRIPT, so the scripts survive a Redis
    restart (which empties the script cache) without any action from us.
    """

    submit: AsyncScript
    lease: AsyncScript
    complete: AsyncScript
    release: AsyncScript
    extend: AsyncScript
    sweep: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> QueueScripts:
        """Register every script on `client` (no round trip: they load on first use)."""
        return cls(
            submit=client.register_script(_lua(_SUBMIT)),
            lease=client.register_script(_lua(_LEASE)),
            complete=client.register_script(_lua(_COMPLETE)),
            release=client.register_script(_lua(_RELEASE)),
            extend=client.register_script(_lua(_EXTEND)),
            sweep=client.register_script(_lua(_SWEEP)),
        )
