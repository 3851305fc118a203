-- Reads everything one micro-batch needs, in one round trip and one consistent snapshot.
-- KEYS[1] = offsets hash, KEYS[2] = meta hash, KEYS[3] = model "current" string, then
--   nu user history ZSETs, then nu user keys of the kind `um` names (none when um = ''),
--   then ni item vector hashes.
-- ARGV[1] = msgpack {f = {offset fields}, nu = users, w = history window, um = 'w' | 'v' | '',
--                    ni = items}
--   um = 'w': ZRANGE 0 -1 WITHSCORES of each user's weights (fold-in);
--   um = 'v': HMGET vec model of each user's vector (ISGD).
-- Returns msgpack {offsets (HMGET), landmark, current, hists, user extras, item vectors};
-- a missing value is false.
local a = cmsgpack.unpack(ARGV[1])
local offsets = {}
if #a.f > 0 then offsets = redis.call('HMGET', KEYS[1], unpack(a.f)) end
local landmark = redis.call('HGET', KEYS[2], 'landmark')
local current = redis.call('GET', KEYS[3])
local hists, extra, items = {}, {}, {}
local pos = 4
for u = 1, a.nu do
  hists[u] = redis.call('ZRANGE', KEYS[pos], -a.w, -1, 'WITHSCORES')
  pos = pos + 1
end
if a.um == 'w' then
  for u = 1, a.nu do
    extra[u] = redis.call('ZRANGE', KEYS[pos], 0, -1, 'WITHSCORES')
    pos = pos + 1
  end
elseif a.um == 'v' then
  for u = 1, a.nu do
    extra[u] = redis.call('HMGET', KEYS[pos], 'vec', 'model')
    pos = pos + 1
  end
end
for i = 1, a.ni do
  items[i] = redis.call('HMGET', KEYS[pos], 'vec', 'model')
  pos = pos + 1
end
return cmsgpack.pack({offsets, landmark, current, hists, extra, items})
