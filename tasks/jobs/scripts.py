"""The Lua scripts of the job store (``tasks.jobs.store``): each changes a job's record,
its events and its bookkeeping in one atomic step on the Redis server."""

# KEYS[1] record, KEYS[2] events; ARGV: ttl, allowed-from (comma list or "*"), new status,
# event type, event data, then field/value pairs. Returns the previous status, or false.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local prev = cjson.decode(cur)
if ARGV[2] ~= '*' then
  local ok = false
  for s in string.gmatch(ARGV[2], '[^,]+') do if s == prev then ok = true end end
  if not ok then return {prev, 0} end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[3])) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', ARGV[4], 'data', ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {prev, 1}
"""


# The one script that ends a job. KEYS[1] record, KEYS[2] events, KEYS[3] fleet counters,
# KEYS[4] its model's queued set, KEYS[5] its owner's active set, KEYS[6] its model's
# held set; ARGV: ttl, allowed-from, status, event data, then field/value pairs. Moves
# the record, appends the terminal event, takes the job out of its model's queued and
# held sets and its owner's active set, and counts it: one step.
# Returns the previous status, whether it applied and (if so) the record as it now is,
# or false for no such job.
END = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local prev = cjson.decode(cur)
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == prev then ok = true end end
if not ok then return {prev, 0} end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[3]))
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local id = cjson.decode(redis.call('HGET', KEYS[1], 'id') or '""')
local model = cjson.decode(redis.call('HGET', KEYS[1], 'model') or 'null')
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[6], id)
redis.call('SREM', KEYS[5], id)
redis.call('HINCRBY', KEYS[3], tostring(model) .. '|' .. ARGV[3], 1)
return {prev, 1, redis.call('HGETALL', KEYS[1])}
"""

# Send a dead worker's job back to its queue. KEYS[1] record, KEYS[2] events, KEYS[3]
# the model's queued set, KEYS[4] its held set; ARGV: ttl, the dead worker, the job
# id, its queue score (submit time), event data. Applies only while the job is still
# held (waiting or running) by that worker; otherwise just drops the stale held-set
# entry, if it still names that worker.
REQUEUE = """
local cur = redis.call('HGET', KEYS[1], 'status')
local worker = redis.call('HGET', KEYS[1], 'worker')
local status = cur and cjson.decode(cur)
if (status ~= 'running' and status ~= 'queued') or not worker
    or cjson.decode(worker) ~= ARGV[2] then
  if redis.call('HGET', KEYS[4], ARGV[3]) == ARGV[2] then redis.call('HDEL', KEYS[4], ARGV[3]) end
  return 0
end
redis.call('HSET', KEYS[1], 'status', cjson.encode('queued'))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', 'requeued', 'data', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
return 1
"""


# A new job, with everything that counts it, in one step: the one way a record is made.
# KEYS[1] record, KEYS[2] events, KEYS[3] the model's queued set, KEYS[4] the owner's
# active set (its quota), KEYS[5] the owner's index, KEYS[6] the Idempotency-Key's key;
# ARGV: ttl, job id, created-at, quota (0: none; with an owner only), whether there is an
# owner, whether there is an Idempotency-Key, its value, its ttl, index trim score, index
# ttl, event data, then field/value pairs. An Idempotency-Key already claimed answers
# {'idem', its value}; a full quota {'quota', jobs}; an id taken {'exists'}; else
# {'created'}. The key is claimed here, with the record: never for a job not written.
CREATE = """
if ARGV[6] == '1' then
  local held = redis.call('GET', KEYS[6])
  if held then return {'idem', held} end
end
if ARGV[5] == '1' and tonumber(ARGV[4]) > 0 then
  local n = redis.call('SCARD', KEYS[4])
  if n >= tonumber(ARGV[4]) then return {'quota', n} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', 'queued', 'data', ARGV[11])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[4], ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[1])
end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[9])
redis.call('EXPIRE', KEYS[5], ARGV[10])
if ARGV[6] == '1' then redis.call('SET', KEYS[6], ARGV[7], 'EX', ARGV[8]) end
return {'created'}
"""

# Undo a submit whose message the broker refused: the record, its events and everything
# that counts it go, and so does its Idempotency-Key, so a retry starts afresh. Same
# KEYS as CREATE; ARGV: job id. Applies only while the job is queued and no worker has
# received it (a message that reached a worker after all runs: the submit stands).
DISCARD = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or cjson.decode(cur) ~= 'queued' or redis.call('HEXISTS', KEYS[1], 'worker') == 1 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
local held = redis.call('GET', KEYS[6])
if held and cjson.decode(held)['job_id'] == ARGV[1] then redis.call('DEL', KEYS[6]) end
return 1
"""
