-- Included by apply_batch.lua and cluster_begin.lua (streams/redis_state.py lua_source); KEYS[2] is
-- the meta hash, p.lm the batch's landmark ('' = no decayed scores in this batch: dead letters only).
-- Returns {-1} from the script while a rescale runs or the stored landmark differs; stores the
-- landmark when none is stored yet.
if p.lm ~= '' then
  local meta = redis.call('HMGET', KEYS[2], 'landmark', 'rescaling')
  if meta[2] == '1' then return {-1} end
  if meta[1] == false then
    redis.call('HSET', KEYS[2], 'landmark', p.lm)
  elseif meta[1] ~= p.lm then
    return {-1}
  end
end
