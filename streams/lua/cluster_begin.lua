-- Redis Cluster: starts a micro-batch by storing its write-ahead copy (all in the {g} slot).
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = in-flight hash ("<topic>:<partition>"
--           -> id of the batch being applied), KEYS[4] = this batch's write-ahead copy (STRING).
-- ARGV[1] = msgpack {g = {field = expected stored offset (string)}, lm = landmark ('' when the
--                    batch carries no decayed scores), id = batch id}
-- ARGV[2] = the write-ahead copy: every slot group's payload and the finish payload (msgpack).
-- Refuses when a partition's offset moved since the load ({0, field, stored}), when another
-- batch of a partition is still in flight ({2, field, id}: finish it first), or while the
-- decay landmark differs or a rescale runs ({-1}). Returns {1} when stored.
local p = cmsgpack.unpack(ARGV[1])
for part, expected in pairs(p.g) do
  local cur = redis.call('HGET', KEYS[1], part)
  if (cur or '-1') ~= expected then return {0, part, cur or '-1'} end
  local busy = redis.call('HGET', KEYS[3], part)
  if busy then return {2, part, busy} end
end
-- #include landmark_guard.lua
redis.call('SET', KEYS[4], ARGV[2])
for part, _ in pairs(p.g) do redis.call('HSET', KEYS[3], part, p.id) end
return {1}
