"""The Lua scripts of batch jobs in Redis: opening a job with its requests, claiming, updating and
closing it, each one atomic across replicas.

Every script gets the same KEYS (`BatchJobKeys.script_keys()`: the open jobs, the per-state counts,
the job counters, the queue's lease set) and ARGV[1..3] (the prefixes of request hashes, job
hashes and provider-batch index keys); its own arguments start at ARGV[4]. All keys share the
queue's hash tag, so they sit in one Redis Cluster slot with the request hashes they touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from lps_server.core.domain import RequestStatus
from lps_server.queue.batch_jobs import JobState

_PRELUDE = """
local open_jobs, counts, meta, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local req_prefix, job_prefix, pid_prefix = ARGV[1], ARGV[2], ARGV[3]

local function count(provider, state, by)
  redis.call('HINCRBY', counts, provider .. ':' .. state, by)
end
"""

# ARGV[4] job id, [5] job token, [6] owner, [7] claim deadline, [8] now, [9] provider, [10] model,
# [11] group, [12] spec, [13] lines, then per request: id, the lease token it is held under.
# All or nothing: returns the ids not held under their token (nothing changed), else {} (also
# for a job recorded before: a repeated call).
_OPEN = """
local jkey = job_prefix .. ARGV[4]
if redis.call('EXISTS', jkey) == 1 then return {} end
local missing = {}
for i = 14, #ARGV, 2 do
  local v = redis.call('HMGET', req_prefix .. ARGV[i], 'status', 'lease')
  if v[1] ~= '$processing' or v[2] ~= ARGV[i + 1] then missing[#missing + 1] = ARGV[i] end
end
if #missing > 0 then return missing end
local n = 0
for i = 14, #ARGV, 2 do
  -- Out of the lease set: no lease lapses and no sweep reclaims it while the job owns it.
  redis.call('HSET', req_prefix .. ARGV[i], 'lease', ARGV[5], 'batch_job', ARGV[4])
  redis.call('ZREM', leases, ARGV[i])
  n = n + 1
end
redis.call('HSET', jkey, 'state', '$recorded', 'provider', ARGV[9], 'model', ARGV[10],
  'group', ARGV[11], 'spec', ARGV[12], 'recorded_at', ARGV[8], 'owner', ARGV[6],
  'owner_until', ARGV[7], 'requests', n, 'lines', ARGV[13])
redis.call('ZADD', open_jobs, ARGV[7], ARGV[4])
count(ARGV[9], '$recorded', 1)
redis.call('HINCRBY', meta, 'requests', n)
return {}
"""

# ARGV[4] job id, [5] owner, [6] claim deadline, [7] now. Claims an open job nobody holds (or
# whose claim lapsed); returns its fields (HGETALL), or false.
_CLAIM = """
local jkey = job_prefix .. ARGV[4]
local v = redis.call('HMGET', jkey, 'state', 'owner', 'owner_until')
if not v[1] or v[1] == '$ended' then return false end
if v[2] and v[2] ~= '' and v[2] ~= ARGV[5] and tonumber(v[3] or '0') > tonumber(ARGV[7]) then
  return false
end
redis.call('HSET', jkey, 'owner', ARGV[5], 'owner_until', ARGV[6])
redis.call('ZADD', open_jobs, ARGV[6], ARGV[4])
return redis.call('HGETALL', jkey)
"""

# ARGV[4] job id, [5] owner, [6] '1' to give the claim up, else '0', [7] the claim's new deadline
# ('' keeps it; giving the claim up, when the job next needs work), then field/value pairs to
# set. Returns 1, or 0 when the owner does not hold the job.
_UPDATE = """
local jkey = job_prefix .. ARGV[4]
local v = redis.call('HMGET', jkey, 'state', 'owner', 'provider')
if not v[1] or v[1] == '$ended' or v[2] ~= ARGV[5] then return 0 end
for i = 8, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  if name == 'state' and value ~= v[1] then
    count(v[3], v[1], -1)
    count(v[3], value, 1)
  elseif name == 'provider_batch_id' then
    redis.call('SET', pid_prefix .. value, ARGV[4])
  end
  redis.call('HSET', jkey, name, value)
end
if ARGV[6] == '1' then
  redis.call('HSET', jkey, 'owner', '', 'owner_until', '')
elseif ARGV[7] ~= '' then
  redis.call('HSET', jkey, 'owner_until', ARGV[7])
end
if ARGV[7] ~= '' then redis.call('ZADD', open_jobs, ARGV[7], ARGV[4]) end
return 1
"""

# ARGV[4] job id, [5] owner, [6] now, [7] retention in ms, [8] outcome. Returns 1 (closed now), 2
# (closed before), 0 (not the owner's).
_CLOSE = """
local jkey = job_prefix .. ARGV[4]
local v = redis.call('HMGET', jkey, 'state', 'owner', 'provider', 'requests', 'provider_batch_id')
if not v[1] then return 0 end
if v[1] == '$ended' then return 2 end
if v[2] ~= ARGV[5] then return 0 end
count(v[3], v[1], -1)
redis.call('HSET', jkey, 'state', '$ended', 'outcome', ARGV[8], 'ended_at', ARGV[6],
  'owner', '', 'owner_until', '')
redis.call('ZREM', open_jobs, ARGV[4])
redis.call('HINCRBY', meta, 'requests', -(tonumber(v[4]) or 0))
redis.call('PEXPIRE', jkey, ARGV[7])
if v[5] and v[5] ~= '' then redis.call('PEXPIRE', pid_prefix .. v[5], ARGV[7]) end
return 1
"""


def _lua(body: str) -> str:
    # State names come from the Python definitions, so the two cannot drift apart.
    names = {s.name.lower(): s.value for s in JobState}
    names["processing"] = RequestStatus.PROCESSING.value
    return Template(_PRELUDE + body).substitute(**names)


@dataclass(frozen=True, slots=True)
class BatchJobScripts:
    """The batch-job scripts, registered on one client (they load themselves again after a
    Redis restart empties the script cache)."""

    open: AsyncScript
    claim: AsyncScript
    update: AsyncScript
    close: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> BatchJobScripts:
        """Register every script on `client` (no round trip)."""
        return cls(
            open=client.register_script(_lua(_OPEN)),
            claim=client.register_script(_lua(_CLAIM)),
            update=client.register_script(_lua(_UPDATE)),
            close=client.register_script(_lua(_CLOSE)),
        )
