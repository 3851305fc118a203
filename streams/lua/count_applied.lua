-- Included by apply_batch.lua and cluster_finish.lua: KEYS[2] is the meta hash; p.n events applied,
-- p.t the latest event time among them (string). Moves last_event_time forward only.
if p.n > 0 then
  local last = redis.call('HGET', KEYS[2], 'last_event_time')
  if last == false or tonumber(p.t) > tonumber(last) then
    redis.call('HSET', KEYS[2], 'last_event_time', p.t)
  end
  redis.call('HINCRBY', KEYS[2], 'applied_events', p.n)
end
