-- Store-and-publish one room message, atomically.
-- KEYS[1] epoch  KEYS[2] seq  KEYS[3] history  KEYS[4] presence
-- [KEYS[5] client-id record]
-- ARGV[1] room  ARGV[2] from  ARGV[3] text  ARGV[4] epoch candidate
-- ARGV[5] room channel  ARGV[6] history length  ARGV[7] client-id TTL (s)
-- ARGV[8] origin node ('' none)  ARGV[9] origin session
-- ARGV[10] W3C traceparent of the publisher ('' or absent: none); carried in
-- the published envelope as `tp`, never in the stored history entry
-- ARGV[11] room idle TTL (s, 0 never; see touch_room)
-- Returns {duplicate (0/1), id, ts}. A known client id returns the original
-- id and ts and stores/publishes nothing.
local k_cid = KEYS[5]
if k_cid then
  local prev = redis.call('GET', k_cid)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    return { 1, tonumber(string.sub(prev, 1, sep - 1)), tonumber(string.sub(prev, sep + 1)) }
  end
end
local epoch = ensure_epoch(KEYS[1], KEYS[2], KEYS[3], ARGV[4])
local id = redis.call('INCR', KEYS[2])
local ts = now_ms()
local stored = cmsgpack.pack({ room = ARGV[1], id = id, from = ARGV[2], text = ARGV[3], ts = ts })
redis.call('RPUSH', KEYS[3], stored)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
touch_room(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[11])
if k_cid then
  redis.call('SET', k_cid, id .. ':' .. ts, 'EX', tonumber(ARGV[7]))
end
local env = { t = 'msg', room = ARGV[1], id = id, from = ARGV[2], text = ARGV[3], ts = ts, ep = epoch }
local o = origin(ARGV[8], ARGV[9])
if o then env.node = o.node; env.session = o.session end
if ARGV[10] and ARGV[10] ~= '' then env.tp = ARGV[10] end
redis.call(PUBLISH, ARGV[5], cmsgpack.pack(env))
return { 0, id, ts }
