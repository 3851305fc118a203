-- Ends a micro-batch applied in parts once every part is in (all these keys are in the {g} slot).
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = in-flight hash, KEYS[4] = the batch's
--           write-ahead copy, KEYS[5] (single node only) = chunk progress hash.
-- ARGV[1] = msgpack {id = batch id, off = {field = new offset (string)}, t = last event time
--                    (string), n = applied count, c = number of chunks (single node)}
-- Moves the offsets, counts the events and drops the write-ahead copy, once: a batch no longer
-- in flight under this id was finished already (by a replay or another worker): returns 0.
-- Single node: returns -2, changing nothing, while fewer than `c` chunks are in (one failed:
-- whoever loads one of its partitions next finishes it from the copy). Returns 1 when finished.
local p = cmsgpack.unpack(ARGV[1])
for part, _ in pairs(p.off) do
  if redis.call('HGET', KEYS[3], part) ~= p.id then return 0 end
end
if KEYS[5] then
  if tonumber(redis.call('HGET', KEYS[5], p.id) or '-1') ~= p.c then return -2 end
  redis.call('HDEL', KEYS[5], p.id)
end
for part, off in pairs(p.off) do
  redis.call('HSET', KEYS[1], part, off)
  redis.call('HDEL', KEYS[3], part)
end
-- #include count_applied.lua
redis.call('DEL', KEYS[4])
return 1
