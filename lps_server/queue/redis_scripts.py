"""The Redis queue's Lua scripts: every state change of a request is one atomic script call.

Atomicity is what makes the queue safe across replicas: a request id is created once however many
replicas submit it, a queued request is leased by exactly one replica, and a result is stored and
published by the first completion only. Each script also takes many requests per call, so a
streamed message of N requests, a bundle's results or a sweep is one round trip.

Leases are fenced: a lease writes its token into the request's hash (`lease`), and extend, release
and complete act only when the caller presents that token, so a replica that lost a lease (it
stalled past it and another replica took the request over) can neither keep, give back nor end
work that is no longer its own. The token stays on the hash once the holder stored its result, so
a holder that lost the reply of `complete` can ask again and learn that its result is the stored
one. Every script is therefore safe to run twice (docs/queue.md, "Fenced leases").

The helpers they share are in `redis_lua`. Every script gets the same KEYS
(`QueueKeys.script_keys()`) and ARGV[1..4] (the key prefixes of requests, groups, end states and
channels); its own arguments start at ARGV[5]. Scores, deadlines
and times travel as the strings Python wrote (`repr` of a float), so a request goes back into the
queue at exactly its original score. Lua only reads numbers to compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from lps_server.queue.redis_lua import lua

# ARGV[5] max_size, ARGV[6] max_bytes, then per request 9 values: id, payload, score, group,
# deadline ('' for none), bytes, enqueued_at, provider, payload digest. Returns per request 'new',
# 'full', 'conflict' (the id is known with another digest) or the status of the earlier submission
# with that id. The digest outlives the payload (deleted once the request ends), so a finished id
# still tells a retry from a different request; a record without one (written by a release
# before digests) takes any payload as a retry.
_SUBMIT = """
local max_size, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local size = redis.call('ZCARD', pending)
local used = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local out, created = {}, 0
for i = 7, #ARGV, 9 do
  local rid, bytes = ARGV[i], tonumber(ARGV[i + 5])
  local known = redis.call('HMGET', req_prefix .. rid, 'status', 'digest')
  if known[1] then
    if known[2] and known[2] ~= ARGV[i + 8] then
      out[#out + 1] = 'conflict'
    else
      out[#out + 1] = known[1]
    end
  elseif size >= max_size or used + bytes > max_bytes then
    out[#out + 1] = 'full'
  else
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    local r = {member = string.format('%0${seq_digits}d', seq) .. ':' .. rid,
               score = ARGV[i + 2], group = ARGV[i + 3], deadline = ARGV[i + 4],
               bytes = bytes, enqueued_at = ARGV[i + 6], provider = ARGV[i + 7], attempts = 0}
    redis.call('HSET', req_prefix .. rid, 'payload', ARGV[i + 1], 'member', r.member,
      'score', r.score, 'group', r.group, 'deadline', r.deadline, 'bytes', ARGV[i + 5],
      'enqueued_at', r.enqueued_at, 'provider', r.provider, 'digest', ARGV[i + 8])
    requeue(rid, r)
    size, used, created = size + 1, used + bytes, created + 1
    out[#out + 1] = 'new'
  end
end
wake_up(created)
return out
"""

# ARGV[5] token, ARGV[6] lease deadline, ARGV[7] now, ARGV[8] group ('' = the head's), ARGV[9]
# max items, ARGV[10] most expired requests to take in one call, ARGV[11..] the providers among
# whose requests to look for the head (none given: all, in the global order). Returns {group, n,
# next due retry (only when it took nothing, else ''), then per item and per expired request: id,
# attempts, payload}, or {'', '0', next due retry} when nothing is queued. Expired ones are
# leased too, so that a replica dying before it ends them leaves them to be reclaimed (and found
# expired again), not lost.
_LEASE = """
local token, lease_deadline, now = ARGV[5], ARGV[6], tonumber(ARGV[7])
local group, max_items, max_expired = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
wake_up(promote_due(ARGV[7]))
if group == '' and #ARGV >= 11 then
  -- The head among the named providers: the lowest (score, member) of their heads.
  local best, best_score = nil, nil
  for i = 11, #ARGV do
    local zkey = by_provider(ARGV[i])
    while true do
      local head = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
      if #head == 0 then break end
      local member, score = head[1], tonumber(head[2])
      local v = redis.call('HMGET', req_prefix .. rid_of(member), 'status', 'member', 'group')
      if v[1] == '$queued' and v[2] == member and v[3] then
        if not best or score < best_score or (score == best_score and member < best) then
          best, best_score, group = member, score, v[3]
        end
        break
      end
      redis.call('ZREM', zkey, member)  -- taken by a release that did not know this zset
    end
  end
elseif group == '' then
  while group == '' do
    local head = redis.call('ZRANGE', pending, 0, 0)
    if #head == 0 then break end
    group = redis.call('HGET', req_prefix .. rid_of(head[1]), 'group') or ''
    if group == '' then redis.call('ZREM', pending, head[1]) end
  end
end
if group == '' then return {'', '0', next_due()} end
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
      local held = lease_one(rid, lease_deadline, token)
      local entry = {rid, held[2] or '0', held[1] or ''}
      if expires(r) and tonumber(r.deadline) <= now then
        expired[#expired + 1] = entry
      else
        items[#items + 1] = entry
      end
    else
      redis.call('ZREM', gkey, member)
      redis.call('ZREM', pending, member)
    end
  end
end
local out = {group, tostring(#items), (#items + #expired == 0) and next_due() or ''}
for _, list in ipairs({items, expired}) do
  for _, entry in ipairs(list) do
    local n = #out
    out[n + 1], out[n + 2], out[n + 3] = entry[1], entry[2], entry[3]
  end
end
return out
"""

# ARGV[5] token ('' = only requests never leased), ARGV[6] retention in ms, ARGV[7] approximate
# channel length cap, ARGV[8] reply channel TTL in ms, then per result 6 values: id, status,
# encoded result, completed_at, channel, reply channel ('' for none). Returns per result 1 where
# this call stored it, 2 where the same holder had stored it before (a repeated call: nothing is
# published again), 0 where the request had ended otherwise, is unknown, or is not held under the
# token. A reply channel serves one streaming call, so it expires soon after its last result
# instead of after the retention.
_COMPLETE = """
local token, retention_ms, maxlen, reply_ttl_ms = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local function publish(channel, result, ttl_ms)
  if channel == '' then return end
  local ckey = chan_prefix .. channel
  redis.call('XADD', ckey, 'MAXLEN', '~', maxlen, '*', 'r', result)
  redis.call('PEXPIRE', ckey, ttl_ms)
end
local out = {}
for i = 9, #ARGV, 6 do
  local rid, status, result, completed_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local r = load(rid)
  if not r then
    out[#out + 1] = 0
  elseif is_final(r.status) then
    out[#out + 1] = (token ~= '' and r.lease == token) and 2 or 0
  elseif (token == '' and r.status ~= '$queued')
      or (token ~= '' and (r.status ~= '$processing' or r.lease ~= token)) then
    out[#out + 1] = 0
  else
    if r.status == '$queued' then unqueue(rid, r) end
    redis.call('ZREM', leases, rid)
    local key = req_prefix .. rid
    -- The payload (essay texts) is not needed once ended; only the result is retained. The
    -- token stays: it says whose result this is.
    redis.call('HDEL', key, 'payload')
    redis.call('HSET', key, 'status', status, 'result', result, 'lease', token)
    redis.call('PEXPIRE', key, retention_ms)
    redis.call('ZADD', ended_prefix .. status, completed_at, rid)
    publish(ARGV[i + 4], result, retention_ms)
    publish(ARGV[i + 5], result, reply_ttl_ms)
    out[#out + 1] = 1
  end
end
return out
"""

# ARGV[5] token, ARGV[6] retry time ('' = at once), ARGV[7..] request ids. Only requests held
# under the token go back. With a retry time (or, at once, when marked as called) they count one
# more failed attempt; with a retry time they wait in
# `delayed` until it; leases and sweeps move them back to their place when due. Returns how many
# went back.
_RELEASE = """
local token, retry_at = ARGV[5], ARGV[6]
local n = 0
for i = 7, #ARGV do
  local rid = ARGV[i]
  local r = load(rid)
  if r and r.status == '$processing' and r.lease == token then
    unlease(rid)
    if retry_at == '' then
      uncall(rid, r)
      requeue(rid, r)
    else
      -- The failed attempt that the mark stood for is the one counted here.
      redis.call('HDEL', req_prefix .. rid, 'called')
      r.attempts = redis.call('HINCRBY', req_prefix .. rid, 'attempts', 1)
      hold(rid, r)
      redis.call('ZADD', delayed, retry_at, rid)
    end
    n = n + 1
  end
end
-- A retry wakes one dispatcher too: its next lease learns when the retry is due, where an
-- idle one would sleep its idle timeout past a retry due at once (Retry-After: 0).
if retry_at == '' then wake_up(n) elseif n > 0 then wake_up(1) end
return n
"""

# ARGV[5] token, ARGV[6] new lease deadline, ARGV[7] '1' to mark the held requests as called (a
# provider call goes out for them), ARGV[8..] request ids. Extends the requests still held under
# the token; returns the ids that are not (lost to another holder, released, or gone), leaving
# out those this holder has ended itself.
_EXTEND = """
local token, deadline, calling = ARGV[5], ARGV[6], ARGV[7] == '1'
local lost = {}
for i = 8, #ARGV do
  local rid = ARGV[i]
  local v = redis.call('HMGET', req_prefix .. rid, 'status', 'lease')
  if v[1] == '$processing' and v[2] == token then
    redis.call('ZADD', leases, 'XX', deadline, rid)
    if calling then redis.call('HSET', req_prefix .. rid, 'called', '1') end
  elseif not (v[1] and is_final(v[1]) and v[2] == token) then
    lost[#lost + 1] = rid
  end
end
return lost
"""

# ARGV[5] now, ARGV[6] lease deadline for the expired ones it takes, ARGV[7] end-state cutoff
# (ended before it are forgotten), ARGV[8] most requests per step, ARGV[9] the token the expired
# ones are leased under. Returns {reclaimed, then per expired request: id, payload}. Work per call
# is bounded so one sweep never stalls Redis; the next sweep goes on.
_SWEEP = """
local now, lease_deadline, ended_before = ARGV[5], ARGV[6], ARGV[7]
local batch, token = tonumber(ARGV[8]), ARGV[9]
local reclaimed = 0
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, batch)) do
  local r = load(rid)
  unlease(rid)
  if r and r.status == '$processing' then
    uncall(rid, r)
    requeue(rid, r)
    reclaimed = reclaimed + 1
  end
end
wake_up(reclaimed + promote_due(now))
local out = {reclaimed}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, batch)) do
  local r = load(rid)
  if r and r.status == '$queued' then
    unqueue(rid, r)
    out[#out + 1] = rid
    out[#out + 1] = lease_one(rid, lease_deadline, token)[1] or ''
  else
    redis.call('ZREM', deadlines, rid)
  end
end
for _, status in ipairs({'$completed', '$failed', '$expired'}) do
  redis.call('ZREMRANGEBYSCORE', ended_prefix .. status, '-inf', '(' .. ended_before)
end
return out
"""


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
            submit=client.register_script(lua(_SUBMIT)),
            lease=client.register_script(lua(_LEASE)),
            complete=client.register_script(lua(_COMPLETE)),
            release=client.register_script(lua(_RELEASE)),
            extend=client.register_script(lua(_EXTEND)),
            sweep=client.register_script(lua(_SWEEP)),
        )
