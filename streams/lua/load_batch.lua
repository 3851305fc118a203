-- Reads everything one micro-batch needs, in one round trip and one consistent snapshot.
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = model "current" string.
-- ARGV[1] = msgpack {f = {offset fields}, w = history window, um = 'w' | 'v' | '',
--                    hk = {user history ZSET, ...}, uk = {user key, ...}, ik = {item vector hash, ...}}
--   um = 'w': uk are the users' weight ZSETs, read whole (fold-in);
--   um = 'v': uk are the users' vector hashes, HMGET vec model (ISGD).
-- Key names travel in the payload, not KEYS (cheaper for the client; single Redis node only).
-- Returns msgpack {offsets (HMGET), landmark, current, hists, user extras, item vectors};
-- a missing value is false.
local a = cmsgpack.unpack(ARGV[1])
local offsets = {}
if #a.f > 0 then offsets = redis.call('HMGET', KEYS[1], unpack(a.f)) end
local landmark = redis.call('HGET', KEYS[2], 'landmark')
local current = redis.call('GET', KEYS[3])
local hists, extra, items = {}, {}, {}
for u, key in ipairs(a.hk) do
  hists[u] = redis.call('ZRANGE', key, -a.w, -1, 'WITHSCORES')
end
if a.um == 'w' then
  for u, key in ipairs(a.uk) do extra[u] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES') end
elseif a.um == 'v' then
  for u, key in ipairs(a.uk) do extra[u] = redis.call('HMGET', key, 'vec', 'model') end
end
for i, key in ipairs(a.ik) do
  items[i] = redis.call('HMGET', key, 'vec', 'model')
end
return cmsgpack.pack({offsets, landmark, current, hists, extra, items})
