-- Single node: applies chunk `i` of a micro-batch in flight, once and in order (streams/chunked.py).
-- KEYS[1] = chunk progress hash (batch id -> chunks applied; begin_batch.lua sets it to 0).
-- ARGV[1] = batch id, ARGV[2] = i (1-based), ARGV[3] = msgpack {o = offset, k = {key, ...},
--           ops = {{index, op, cap, {...}}, ...}}: apply_batch.lua's ops, each on key k[index - o]
--           (the ops keep their index in the whole batch's key list, of which k is a slice).
-- Applies only when exactly i - 1 chunks are in: a chunk arrives twice when a worker's successor
-- finishes the batch from its write-ahead copy while the worker still sends it, and each sender
-- sends its chunks in order, so every chunk is applied once, in order, by whoever comes first.
-- Returns 1 when applied, 0 when not (already in, or the batch is finished or unknown).
local done = redis.call('HGET', KEYS[1], ARGV[1])
if not done or tonumber(done) ~= tonumber(ARGV[2]) - 1 then return 0 end
local p = cmsgpack.unpack(ARGV[3])

-- #include apply_ops.lua
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
