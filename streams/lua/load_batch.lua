-- Reads everything one micro-batch needs, in one round trip and one consistent snapshot.
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = model "current" string,
-- KEYS[4] = in-flight hash (partition field -> id of a batch begun and not finished).
-- ARGV[1] = msgpack {f = {offset fields}, um = 'v' | '',
--                    hk = {user item HASH (P:{u:U}:iw), ...}, uk = {user vector key, ...},
--                    ik = {item vector key, ...}}
--   hk: read whole (HGETALL): the worker merges the batch into them and writes back what changed;
--   um = 'v': uk are the users' vector STRINGs ("<model tag>\0<float32 bytes>"; ISGD).
-- Key names travel in the payload, not KEYS (cheaper for the client; single Redis node only).
-- Returns msgpack {offsets (HMGET), landmark, current, user items, user extras, item vectors,
-- in-flight batch ids of the partitions (HMGET)}; a missing value is false.
local a = cmsgpack.unpack(ARGV[1])
local offsets, busy = {}, {}
if #a.f > 0 then
  offsets = redis.call('HMGET', KEYS[1], unpack(a.f))
  busy = redis.call('HMGET', KEYS[4], unpack(a.f))
end
local landmark = redis.call('HGET', KEYS[2], 'landmark')
local current = redis.call('GET', KEYS[3])
local hists, extra, items = {}, {}, {}
for u, key in ipairs(a.hk) do
  hists[u] = redis.call('HGETALL', key)
end
if a.um == 'v' then
  for u, key in ipairs(a.uk) do extra[u] = redis.call('GET', key) end
end
for i, key in ipairs(a.ik) do
  items[i] = redis.call('GET', key)
end
return cmsgpack.pack({offsets, landmark, current, hists, extra, items, busy})
