-- Applies one aggregated micro-batch atomically, together with the Kafka offsets it covers.
-- KEYS[1] = offsets hash, KEYS[2] = meta hash. The keys the ops write travel in the payload
-- (`k`, referred to by index): declaring thousands of KEYS costs the client more than the whole
-- msgpack payload. The script already spans many hash slots, so it is for a single Redis node.
-- ARGV[1] = msgpack map {g = {field = expected stored offset (string)}, lm = landmark (string;
--                        '' when the batch holds dead letters only),
--                        off = {field = new offset (string)}, t = last event time (string),
--                        n = applied count, k = {key, ...},
--                        ops = {{index into k, op, cap, {...}}, ...}}
-- Ops: "z" add each (member, double) pair to its score (ZINCRBY semantics for increments > 0;
--          one <= 0 subtracts, see zincr), then keep the top `cap` by score (0 = unbounded) when
--          a member was added (a key that got no new member has not grown since it was last cut;
--          a smaller `cap` set on a running store therefore applies to a key when it next gains
--          a member);
--      "g" ZADD GT the (score, member) pairs (the session index: a user's latest click time of
--          the item), then keep the top `cap` as "z" does;
--      "r" ZREM the listed members (a forgotten user from the session index);
--      "s" HSET the flat (field, value, ...) list (values may be binary);
--      "x" HDEL the listed fields;
--      "t" SET the key to the one value listed (a vector STRING: "<model tag>\0<float32 bytes>");
--      "v" add a float32 vector delta: {model, base, delta} with `cap` components. If the key
--          already holds a vector of that model, delta is added to it (so concurrent writers'
--          updates commute); otherwise delta is added to `base`. Stores "<model>\0<vector>".
--      "d" DEL the key.
-- msgpack carries doubles bit for bit and bytes as they are, so nothing is lost in transit.
-- Returns {1} when applied, {0, field, stored} when the offset guard failed (another writer
-- or a replay got there first), {-1} while the decay landmark differs or a rescale is running.
local p = cmsgpack.unpack(ARGV[1])
for part, expected in pairs(p.g) do
  local cur = redis.call('HGET', KEYS[1], part)
  if (cur or '-1') ~= expected then return {0, part, cur or '-1'} end
end
-- #include landmark_guard.lua

-- #include apply_ops.lua
for part, off in pairs(p.off) do redis.call('HSET', KEYS[1], part, off) end
-- #include count_applied.lua
return {1}
