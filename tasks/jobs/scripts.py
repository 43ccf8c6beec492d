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


# The one script that ends a job. KEYS[1] record, KEYS[2] events, KEYS[3] fleet counters;
# ARGV: ttl, allowed-from, status, event data, queued-set prefix, active-set prefix,
# running-set prefix, then field/value pairs. Moves the record, appends the terminal
# event, takes the job out of its model's queued and running sets and its owner's
# active set, and counts it: one step.
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
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'type', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local id = cjson.decode(redis.call('HGET', KEYS[1], 'id') or '""')
local model = cjson.decode(redis.call('HGET', KEYS[1], 'model') or 'null')
local owner = cjson.decode(redis.call('HGET', KEYS[1], 'owner') or 'null')
if type(model) == 'string' then
  redis.call('ZREM', ARGV[5] .. model, id)
  redis.call('HDEL', ARGV[7] .. model, id)
end
if type(owner) == 'string' then redis.call('SREM', ARGV[6] .. owner, id) end
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
