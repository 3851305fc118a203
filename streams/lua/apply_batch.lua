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
if p.lm ~= '' then  -- '' = no decayed scores in this batch (dead letters only)
  local meta = redis.call('HMGET', KEYS[2], 'landmark', 'rescaling')
  if meta[2] == '1' then return {-1} end
  if meta[1] == false then
    redis.call('HSET', KEYS[2], 'landmark', p.lm)
  elseif meta[1] ~= p.lm then
    return {-1}
  end
end

local CHUNK = 1000  -- pairs per variadic call: stays far below Lua's C-stack limit for unpack
local function bounded(key, cap)
  if cap > 0 then
    local n = redis.call('ZCARD', key)
    if n > cap then redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1) end
  end
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
-- ZINCRBY for many members in two calls: ZMSCORE the current scores, add in Lua (the same
-- double addition ZINCRBY does; scores cross the Lua boundary as %.17g text, exactly), and one
-- variadic ZADD. One command per pair cost ~5x more.
-- An increment <= 0 is a forgotten user's share taken away (models/forget.py): a member that
-- is not there (pruned by its bound) is skipped, and one left at <= RESIDUE x |increment| is
-- rounding and is removed. models/online.py (_add, FORGET_RESIDUE) does the same.
local RESIDUE = 1e-9
local function zincr(key, kv)
  local added = 0  -- new members: a key only grows, and needs pruning, when some were added
  for i = 1, #kv, 2 * CHUNK do
    local j = math.min(i + 2 * CHUNK - 1, #kv)
    local members = {}
    for x = i, j, 2 do members[#members + 1] = kv[x] end
    local cur = redis.call('ZMSCORE', key, unpack(members))
    local args, gone = {}, {}
    for x = 1, #members do
      local v = kv[i + 2 * x - 1]
      local c = cur[x]
      if v > 0 then
        if c then v = tonumber(c) + v end
        args[#args + 1] = v
        args[#args + 1] = members[x]
      elseif c then  -- a forgotten user's share: subtract from members that are still there
        local left = tonumber(c) + v
        if left <= RESIDUE * -v then
          gone[#gone + 1] = members[x]
        else
          args[#args + 1] = left
          args[#args + 1] = members[x]
        end
      end
    end
    if #args > 0 then added = added + redis.call('ZADD', key, unpack(args)) end
    if #gone > 0 then redis.call('ZREM', key, unpack(gone)) end
  end
  return added
end
local fmts = {}

for _, op in ipairs(p.ops) do
  local key = p.k[op[1]]
  local kind = op[2]
  local cap = op[3]
  local kv = op[4]
  if kind == 'z' then
    -- The key was cut to `cap` whenever it last grew, so with no new member it still fits.
    if #kv > 0 and zincr(key, kv) > 0 then bounded(key, cap) end
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
for part, off in pairs(p.off) do redis.call('HSET', KEYS[1], part, off) end
if p.n > 0 then
  local last = redis.call('HGET', KEYS[2], 'last_event_time')
  if last == false or tonumber(p.t) > tonumber(last) then
    redis.call('HSET', KEYS[2], 'last_event_time', p.t)
  end
  redis.call('HINCRBY', KEYS[2], 'applied_events', p.n)
end
return {1}
