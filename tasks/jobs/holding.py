"""The two steps of a job on a worker, as atomic job-store scripts.

A worker *receives* a job when a task thread takes its message: the job stays
``queued`` (it still waits, now inside the worker, behind earlier batches), keeps
its place in its model's queued set (so queue positions count it) and enters its
model's held set (``kiln:running:<model>``), so that the reaper sends it again
should that worker die. The job *starts* when the engine begins the pipeline call
that holds its images: only then is it ``running``, with ``started_at`` the time
that call began, and out of the queued set.
"""

from __future__ import annotations

# KEYS[1] record, KEYS[2] events, KEYS[3] the model's queued set, KEYS[4] its held set;
# ARGV: ttl, worker, job id, attempt, received-at (JSON), event data. From queued, or
# from running (its worker died before the reaper saw it): it waits again, on this
# worker. Returns the previous status and whether it applied, or false for no such job.
RECEIVE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local prev = cjson.decode(cur)
if prev ~= 'queued' and prev ~= 'running' then return {prev, 0} end
redis.call('HSET', KEYS[1], 'status', cjson.encode('queued'), 'worker', cjson.encode(ARGV[2]),
  'attempts', ARGV[4], 'received_at', ARGV[5])
if prev == 'running' then
  local progress = cjson.decode(redis.call('HGET', KEYS[1], 'progress') or 'null')
  local steps = type(progress) == 'table' and progress['steps'] or 0
  redis.call('HSET', KEYS[1], 'started_at', 'null',
    'progress', cjson.encode({step = 0, steps = steps}))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', 'received', 'data', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local created = tonumber(cjson.decode(redis.call('HGET', KEYS[1], 'created_at') or '0')) or 0
redis.call('ZADD', KEYS[3], created, ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[2])
return {prev, 1}
"""

# KEYS[1] record, KEYS[2] events, KEYS[3] the model's queued set; ARGV: ttl, worker,
# job id, started-at (JSON), event data, and (optional, JSON) the seconds it waited for
# its model to load. Applies only while the job is queued on this worker (not canceled
# meanwhile, nor sent again and received by another worker).
START = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local prev = cjson.decode(cur)
local worker = cjson.decode(redis.call('HGET', KEYS[1], 'worker') or 'null')
if prev ~= 'queued' or worker ~= ARGV[2] then return {prev, 0} end
redis.call('HSET', KEYS[1], 'status', cjson.encode('running'), 'started_at', ARGV[4])
if ARGV[6] and ARGV[6] ~= 'null' then redis.call('HSET', KEYS[1], 'load_wait_s', ARGV[6]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', 'started', 'data', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[3])
return {prev, 1}
"""
