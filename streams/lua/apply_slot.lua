-- Redis Cluster: applies the part of one micro-batch whose keys share one hash slot, once.
-- KEYS[1] = the slot's guard hash P:{<slot tag>}:applied: "<topic>:<partition>" -> the end
--           offset of the last batch whose updates to this slot are in. Every key of the
--           payload hashes to KEYS[1]'s slot (streams/cluster_state.py groups them so).
-- ARGV[1] = msgpack {e = {field = the batch's end offset (string)}, o = offset, k = {key, ...},
--                    ops = {{index, op, cap, {...}}, ...}}: each op on key k[index - o]. A
--           slot's group over the chunk budget comes in parts (streams/chunked.py cut_ops), part
--           j > 0 guarded by the fields "<topic>:<partition>#<j>" instead.
-- The ops are apply_batch.lua's ("z", "g", "r", "s", "x", "t", "v", "d"; see there) and must stay in step.
-- Effectively once per slot group: a batch is replayed from its write-ahead copy after a crash,
-- so a group may arrive twice; the guard already at or past the batch's end offset means it is
-- in, and nothing happens. A batch's partitions are written together, so checking them all
-- agrees with checking one.
-- Returns 1 when applied, 0 when it already was.
local p = cmsgpack.unpack(ARGV[1])
for part, off in pairs(p.e) do
  local cur = redis.call('HGET', KEYS[1], part)
  if cur and tonumber(cur) >= tonumber(off) then return 0 end
end

-- #include apply_ops.lua
for part, off in pairs(p.e) do redis.call('HSET', KEYS[1], part, off) end
return 1
