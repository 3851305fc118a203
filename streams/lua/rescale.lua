-- Moves one sorted set of decayed scores to a new landmark: every score times ARGV[1] (the
-- rescale factor, as Python's repr, so Lua reads the same double), rounded to a whole unit
-- (halves up: models.decay.quantise); a member rounded to 0 has decayed to nothing and goes.
-- KEYS[1] = the sorted set. Atomic per key, so a reader never sees a half-rescaled row.
-- Scores cross the Lua boundary as %.17g text: whole numbers exactly.
local CHUNK = 1000
local f = tonumber(ARGV[1])
local flat = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local args, a, gone, g = {}, 0, {}, 0
for i = 1, #flat, 2 do
  local x = math.floor(tonumber(flat[i + 1]) * f + 0.5)
  if x > 0 then
    args[a + 1] = x
    args[a + 2] = flat[i]
    a = a + 2
  else
    g = g + 1
    gone[g] = flat[i]
  end
end
for i = 1, a, 2 * CHUNK do
  redis.call('ZADD', KEYS[1], unpack(args, i, math.min(i + 2 * CHUNK - 1, a)))
end
for i = 1, g, CHUNK do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + CHUNK - 1, g)))
end
return a / 2
