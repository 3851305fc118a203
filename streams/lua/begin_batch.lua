-- Starts a micro-batch applied in parts (streams/chunked.py): its write-ahead copy goes in.
-- Single node: the parts are chunks of bounded cost; Redis Cluster: one part per hash slot (all
-- these keys are in the {g} slot).
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = in-flight hash ("<topic>:<partition>"
--           -> id of the batch being applied), KEYS[4] = this batch's write-ahead copy (STRING),
--           KEYS[5] (single node only) = chunk progress hash (batch id -> chunks applied).
-- ARGV[1] = msgpack {g = {field = expected stored offset (string)}, lm = landmark ('' when the
--                    batch carries no decayed scores), id = batch id}
-- ARGV[2] (optional) = the write-ahead copy: every part's payload and the finish payload
--           (msgpack), stored here. The worker leaves it out: a plain SET with an expiry put the
--           copy in KEYS[4] just before (a large argument, which Redis takes without copying; a
--           script copying it held Redis 2-5 ms), and this makes it permanent.
-- Refuses when a partition's offset moved since the load ({0, field, stored}), when another
-- batch of a partition is still in flight ({2, field, id}: finish it first), when the copy is
-- not there ({3}), or while the decay landmark differs or a rescale runs ({-1}). Returns {1}
-- when begun.
local p = cmsgpack.unpack(ARGV[1])
for part, expected in pairs(p.g) do
  local cur = redis.call('HGET', KEYS[1], part)
  if (cur or '-1') ~= expected then return {0, part, cur or '-1'} end
  local busy = redis.call('HGET', KEYS[3], part)
  if busy then return {2, part, busy} end
end
-- #include landmark_guard.lua
if ARGV[2] then
  redis.call('SET', KEYS[4], ARGV[2])
else
  if redis.call('EXISTS', KEYS[4]) == 0 then return {3} end
  redis.call('PERSIST', KEYS[4])
end
if KEYS[5] then redis.call('HSET', KEYS[5], p.id, 0) end
for part, _ in pairs(p.g) do redis.call('HSET', KEYS[3], part, p.id) end
return {1}
