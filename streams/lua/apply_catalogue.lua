-- Applies catalogue events of one topic, effectively once (streams/catalogue.py).
-- KEYS[1] P:{g}:items (HASH item -> record), KEYS[2] P:{g}:items:feed (STREAM),
-- KEYS[3] P:{g}:items:offsets (HASH "<topic>:<partition>" -> last applied offset, "#changes").
-- ARGV[1] topic, ARGV[2] feed MAXLEN (approximate), then groups of four:
-- partition, offset, item, record ("" = a dead letter: only the offset moves).
-- A record at or below its partition's stored offset was applied before and is skipped, so a
-- replay after a crash (Kafka offsets are committed after this script) changes nothing.
local items, feed, offsets = KEYS[1], KEYS[2], KEYS[3]
local topic, maxlen = ARGV[1], ARGV[2]
local applied, skipped = 0, 0
local last = {}
for i = 3, #ARGV, 4 do
  local field = topic .. ':' .. ARGV[i]
  local offset = tonumber(ARGV[i + 1])
  local stored = last[field]
  if stored == nil then
    stored = tonumber(redis.call('HGET', offsets, field) or '-1')
    last[field] = stored
  end
  if offset > stored then
    local item, record = ARGV[i + 2], ARGV[i + 3]
    if record ~= '' then
      redis.call('HSET', items, item, record)
      local v = redis.call('HINCRBY', offsets, '#changes', 1)
      redis.call('XADD', feed, 'MAXLEN', '~', maxlen, '*', 'i', item, 'v', v)
      applied = applied + 1
    end
    last[field] = offset
  else
    skipped = skipped + 1
  end
end
for field, offset in pairs(last) do
  redis.call('HSET', offsets, field, offset)
end
return {applied, skipped}
