-- Applies one aggregated micro-batch atomically, together with the Kafka offsets it covers.
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3..] = keys the ops refer to (by index).
-- ARGV[1] = JSON {g = {partition = expected stored offset}, lm = landmark string,
--                 off = {partition = new offset}, t = last event time string, n = applied count,
--                 ops = {{key index, op, cap, {member, value, ...}}, ...}}
-- Ops: "z" ZINCRBY each pair then keep the top `cap` by score (cap 0 = unbounded);
--      "h" ZADD GT each (member, time) then keep the newest `cap`;
--      "s" HSET each pair;  "d" DEL the key;  "r" ZREM each member.
-- Values travel as strings so no precision is lost to Lua's number formatting.
-- Returns {1} when applied, {0, partition, stored} when the offset guard failed (another writer
-- or a replay got there first), {-1} while the decay landmark differs or a rescale is running.
local p = cjson.decode(ARGV[1])
for part, expected in pairs(p.g) do
  local cur = redis.call('HGET', KEYS[1], part)
  if (cur or '-1') ~= expected then return {0, part, cur or '-1'} end
end
local meta = redis.call('HMGET', KEYS[2], 'landmark', 'rescaling')
if meta[2] == '1' then return {-1} end
if meta[1] == false then
  redis.call('HSET', KEYS[2], 'landmark', p.lm)
elseif meta[1] ~= p.lm then
  return {-1}
end
for _, op in ipairs(p.ops) do
  local key = KEYS[op[1]]
  local kind = op[2]
  local cap = tonumber(op[3])
  local kv = op[4]
  if kind == 'z' then
    for i = 1, #kv, 2 do redis.call('ZINCRBY', key, kv[i + 1], kv[i]) end
    if cap > 0 then
      local n = redis.call('ZCARD', key)
      if n > cap then redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1) end
    end
  elseif kind == 'h' then
    for i = 1, #kv, 2 do redis.call('ZADD', key, 'GT', kv[i + 1], kv[i]) end
    if cap > 0 then
      local n = redis.call('ZCARD', key)
      if n > cap then redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1) end
    end
  elseif kind == 's' then
    for i = 1, #kv, 2 do redis.call('HSET', key, kv[i], kv[i + 1]) end
  elseif kind == 'd' then
    redis.call('DEL', key)
  elseif kind == 'r' then
    for i = 1, #kv do redis.call('ZREM', key, kv[i]) end
  end
end
for part, off in pairs(p.off) do redis.call('HSET', KEYS[1], part, off) end
local last = redis.call('HGET', KEYS[2], 'last_event_time')
if last == false or tonumber(p.t) > tonumber(last) then
  redis.call('HSET', KEYS[2], 'last_event_time', p.t)
end
redis.call('HINCRBY', KEYS[2], 'applied_events', p.n)
return {1}
