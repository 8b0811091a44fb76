-- Route a direct message.
-- KEYS[1] dm id counter (on Redis Cluster: the recipient's counter, in the
-- slot of the recipient's channel)
-- ARGV[1] from  ARGV[2] to  ARGV[3] text  ARGV[4] recipient's channel
-- ARGV[5] sender's channel ('' on Redis Cluster: another slot, so the caller
-- publishes the sender's copy itself)  ARGV[6] origin node  ARGV[7] origin session
-- When no node subscribes to the recipient's channel nothing happens and
-- {0, 0, 0} is returned. Otherwise the message gets the next id and is
-- published to the recipient's channel, then to the sender's (a node on both
-- receives two copies and drops the second). Returns {1, id, ts, packed}.
local subs = redis.call('PUBSUB', NUMSUB, ARGV[4])
if tonumber(subs[2]) == 0 then
  return { 0, 0, 0, '' }
end
local id = redis.call('INCR', KEYS[1])
local ts = now_ms()
local env = { t = 'dm', from = ARGV[1], to = ARGV[2], text = ARGV[3], ts = ts, id = id }
local o = origin(ARGV[6], ARGV[7])
if o then env.node = o.node; env.session = o.session end
local packed = cmsgpack.pack(env)
redis.call(PUBLISH, ARGV[4], packed)
if ARGV[5] ~= '' and ARGV[5] ~= ARGV[4] then
  redis.call(PUBLISH, ARGV[5], packed)
end
return { 1, id, ts, packed }
