-- Shared by apply_batch.lua, apply_chunk.lua and apply_slot.lua: each includes it where it says
-- `-- #include apply_ops.lua` (streams/redis_state.py lua_source). It applies `p.ops`, the
-- packed increments of one batch (or of one chunk or hash slot's share of it), to their keys.
-- A "z" op with a negative cap is the last part of an op split over several chunks
-- (streams/chunked.py): it cuts the key to -cap whether or not this part added a member, since
-- the parts before it may have (they carry cap 0: no cut until the whole op is in).
local CHUNK = 1000  -- pairs per variadic call: stays far below Lua's C-stack limit for unpack
-- One call, no ZCARD first: the ranks 0 .. -(cap + 1) are empty while the key holds cap or fewer.
local function bounded(key, cap)
  if cap > 0 then redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1) end
end
local function variadic(cmd, key, opt, kv)
  for i = 1, #kv, 2 * CHUNK do
    local j = math.min(i + 2 * CHUNK - 1, #kv)
    if opt then
      redis.call(cmd, key, opt, unpack(kv, i, j))
    else
      redis.call(cmd, key, unpack(kv, i, j))
    end
  end
end
-- Other ops: ZINCRBY for many members in two calls: ZMSCORE the current scores, add in Lua (the
-- same double addition ZINCRBY does; scores cross the Lua boundary as %.17g text, exactly), and
-- one variadic ZADD (on the worker's 2,000-event batches, one command per pair was no cheaper:
-- docs/measurements.md, redis_floor).
-- An increment <= 0 is a forgotten user's share taken away (models/forget.py): a member that
-- is not there (pruned by its bound) is skipped, and one left at <= RESIDUE x |increment| is
-- rounding and is removed. models/online.py (_add, FORGET_RESIDUE) does the same.
local RESIDUE = 1e-9
-- An op of at most SMALL members, every increment positive, is one ZINCRBY per member instead:
-- the same double addition, without the two tables and the second call. At a shop's rate most
-- ops are that small (a click adds one member to the rows of each item before it in the window):
-- 3.1 vs 4.5 us for one member, 5.0 vs 7.1 for two, 21 vs 26 for ten, even at 30 to 100
-- (docs/experiments.md). ZINCRBY does not tell a new member from an old one, so such an op counts
-- as one that may have added (the caller's cut then finds nothing to remove if none was).
local SMALL = 16
local function zincr(key, kv)
  local n = #kv
  if n <= 2 * SMALL then
    local positive = true
    for x = 2, n, 2 do
      if kv[x] <= 0 then positive = false; break end
    end
    if positive then
      for x = 1, n, 2 do redis.call('ZINCRBY', key, kv[x + 1], kv[x]) end
      return 1
    end
  end
  local added = 0  -- new members: a key only grows, and needs pruning, when some were added
  for i = 1, #kv, 2 * CHUNK do
    local j = math.min(i + 2 * CHUNK - 1, #kv)
    -- Counters instead of #t + 1 (a length search per append): this loop runs per member.
    local members, m = {}, 0
    for x = i, j, 2 do m = m + 1; members[m] = kv[x] end
    local cur = redis.call('ZMSCORE', key, unpack(members, 1, m))
    local args, a, gone, g = {}, 0, {}, 0
    local x = i + 1
    for y = 1, m do
      local v = kv[x]
      x = x + 2
      local c = cur[y]
      if v > 0 then
        if c then v = tonumber(c) + v end
        args[a + 1] = v
        args[a + 2] = members[y]
        a = a + 2
      elseif c then  -- a forgotten user's share: subtract from members that are still there
        local left = tonumber(c) + v
        if left <= RESIDUE * -v then
          g = g + 1
          gone[g] = members[y]
        else
          args[a + 1] = left
          args[a + 2] = members[y]
          a = a + 2
        end
      end
    end
    if a > 0 then added = added + redis.call('ZADD', key, unpack(args, 1, a)) end
    if g > 0 then redis.call('ZREM', key, unpack(gone, 1, g)) end
  end
  return added
end
local fmts = {}
local koff = p.o or 0  -- a chunk's ops keep their batch-wide key index: its keys start after it

for _, op in ipairs(p.ops) do
  local key = p.k[op[1] - koff]
  local kind = op[2]
  local cap = op[3]
  local kv = op[4]
  if kind == 'z' and cap < 0 then  -- the last part of a split op (see the top)
    if #kv > 0 then zincr(key, kv) end
    bounded(key, -cap)
  elseif kind == 'z' then
    -- The key was cut to `cap` whenever it last grew, so with no new member it still fits.
    if #kv > 0 and zincr(key, kv) > 0 then bounded(key, cap) end
  elseif kind == 'g' then
    -- The session index (item -> user -> last click time): ZADD GT keeps each user's latest
    -- time; a cut as for 'z' (a negative cap: the last part of a split op cuts regardless).
    local added = 0
    for i = 1, #kv, 2 * CHUNK do
      added = added + redis.call('ZADD', key, 'GT', unpack(kv, i, math.min(i + 2 * CHUNK - 1, #kv)))
    end
    if cap < 0 then bounded(key, -cap) elseif added > 0 then bounded(key, cap) end
  elseif kind == 'r' then
    for i = 1, #kv, CHUNK do redis.call('ZREM', key, unpack(kv, i, math.min(i + CHUNK - 1, #kv))) end
  elseif kind == 's' then
    if #kv > 0 then variadic('HSET', key, nil, kv) end
  elseif kind == 'x' then
    for i = 1, #kv, CHUNK do redis.call('HDEL', key, unpack(kv, i, math.min(i + CHUNK - 1, #kv))) end
  elseif kind == 't' then
    redis.call('SET', key, kv[1])
  elseif kind == 'v' then
    local fmt = fmts[cap]
    if fmt == nil then fmt = '<' .. string.rep('f', cap); fmts[cap] = fmt end
    local cur = redis.call('GET', key)
    local base = kv[2]
    if cur then
      local z = string.find(cur, '\0', 1, true)
      if z and string.sub(cur, 1, z - 1) == kv[1] and #cur - z == 4 * cap then base = string.sub(cur, z + 1) end
    end
    local b = {struct.unpack(fmt, base)}
    local d = {struct.unpack(fmt, kv[3])}
    for j = 1, cap do b[j] = b[j] + d[j] end
    redis.call('SET', key, kv[1] .. '\0' .. struct.pack(fmt, unpack(b, 1, cap)))
  elseif kind == 'd' then
    redis.call('DEL', key)
  end
end
