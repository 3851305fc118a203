-- Moves one decayed key to a new landmark and records that it did, atomically (streams/rescale.py).
-- KEYS[1] = the key, KEYS[2] = its hash slot's progress marker (same slot: the slot's tag).
-- ARGV[1] = the rescale factor as Python's repr (Lua reads the same double), ARGV[2] = 'z' for a
-- sorted set of decayed scores, 'h' for a user item HASH (16-byte values '<dd': time, weight).
-- 'z': every score times the factor, rounded to a whole unit (halves up: models.decay.quantise); a
--      member rounded to 0 has decayed to nothing and goes. Scores cross the Lua boundary as %.17g
--      text: whole numbers exactly.
-- 'h': the weight half times the factor (raw doubles, not rounded); a weight at or below 1e-250
--      becomes NaN (missing), an item left with neither half goes; times are not decayed.
-- Then KEYS[2] = ARGV[4] ('<plan>\n<key>'): the slot's keys are rescaled in name order, so a rescale
-- resumed after a crash skips every name up to the marker and multiplies no key twice.
-- ARGV[3] = what the caller last saw in KEYS[2] ('' for nothing): if the marker holds anything else,
-- another rescaler got here first and this returns -1, changing nothing.
local CHUNK = 1000
local key, f, kind = KEYS[1], tonumber(ARGV[1]), ARGV[2]
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return -1 end
local set, s, gone, g = {}, 0, {}, 0
local function keep(a, b) set[s + 1] = a; set[s + 2] = b; s = s + 2 end  -- counters: no #t per append
local function lose(m) g = g + 1; gone[g] = m end
if kind == 'z' then
  local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #flat, 2 do
    local x = math.floor(tonumber(flat[i + 1]) * f + 0.5)
    if x > 0 then keep(x, flat[i]) else lose(flat[i]) end
  end
else
  local NAN = string.char(0, 0, 0, 0, 0, 0, 248, 127)  -- float('nan') packed '<d' (driftrec/userstate.py)
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local v = flat[i + 1]
    if #v == 16 then
      local w = struct.unpack('<d', string.sub(v, 9, 16))
      if w == w then  -- a weight half to decay (NaN: none)
        local t = string.sub(v, 1, 8)
        local x = w * f
        if x > 1e-250 then
          keep(flat[i], t .. struct.pack('<d', x))
        else
          local tv = struct.unpack('<d', t)
          if tv == tv then keep(flat[i], t .. NAN) else lose(flat[i]) end  -- no time half: the item goes
        end
      end
    end
  end
end
-- Variadic writes in chunks: far below Lua's C-stack limit for unpack.
local put, drop = 'ZADD', 'ZREM'
if kind ~= 'z' then put, drop = 'HSET', 'HDEL' end
for i = 1, s, 2 * CHUNK do redis.call(put, key, unpack(set, i, math.min(i + 2 * CHUNK - 1, s))) end
for i = 1, g, CHUNK do redis.call(drop, key, unpack(gone, i, math.min(i + CHUNK - 1, g))) end
redis.call('SET', KEYS[2], ARGV[4])
return s / 2
