-- Redis Cluster: ends a micro-batch once every slot group is in (all in the {g} slot).
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = in-flight hash, KEYS[4] = the batch's
--           write-ahead copy.
-- ARGV[1] = msgpack {id = batch id, off = {field = new offset (string)}, t = last event time
--                    (string), n = applied count}
-- Moves the offsets, counts the events and drops the write-ahead copy, once: a batch no longer
-- in flight under this id was finished already (by a replay or another worker). Returns 1 or 0.
local p = cmsgpack.unpack(ARGV[1])
for part, _ in pairs(p.off) do
  if redis.call('HGET', KEYS[3], part) ~= p.id then return 0 end
end
for part, off in pairs(p.off) do
  redis.call('HSET', KEYS[1], part, off)
  redis.call('HDEL', KEYS[3], part)
end
-- #include count_applied.lua
redis.call('DEL', KEYS[4])
return 1
