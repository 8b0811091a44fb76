-- Shared helpers, prepended to every script.

-- Every script's first argument is the deployment's publish command:
-- 'PUBLISH' on one Redis, 'SPUBLISH' (sharded pub/sub) on a Redis Cluster,
-- where each channel hashes to the slot of the script's keys, so both stay
-- on the shard that runs the script. The script's own arguments follow:
-- the `ARGV` of every script body holds those alone, from 1.
local PUBLISH = ARGV[1]
if PUBLISH ~= 'PUBLISH' and PUBLISH ~= 'SPUBLISH' then
  return redis.error_reply('ERR the first argument must be PUBLISH or SPUBLISH')
end
-- Subscriber count of a channel, of the same kind of pub/sub.
local NUMSUB = (PUBLISH == 'SPUBLISH') and 'SHARDNUMSUB' or 'NUMSUB'
local ARGV = (function(all)
  local own = {}
  for i = 2, #all do
    own[i - 1] = all[i]
  end
  return own
end)(ARGV)

-- Redis server time in Unix milliseconds (one clock for the whole cluster).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The room's epoch. A room's epoch and sequence are created together on
-- first use; if either is missing (first use, or the store lost them) a new
-- epoch starts: sequence 0, empty history.
local function ensure_epoch(k_epoch, k_seq, k_history, candidate)
  local epoch = redis.call('GET', k_epoch)
  if epoch and redis.call('EXISTS', k_seq) == 1 then
    return epoch
  end
  redis.call('SET', k_epoch, candidate)
  redis.call('SET', k_seq, 0)
  redis.call('DEL', k_history)
  return candidate
end

-- Releases an idle room's state: while the room has no presence entry, its
-- epoch, sequence and history expire `ttl` seconds after the last message,
-- join or leave (each call refreshes it); while anyone is present they do
-- not expire. After expiry the room starts a new epoch. `ttl` 0: never.
local function touch_room(k_epoch, k_seq, k_history, k_presence, ttl)
  ttl = tonumber(ttl) or 0
  if ttl > 0 and redis.call('EXISTS', k_presence) == 0 then
    redis.call('EXPIRE', k_epoch, ttl)
    redis.call('EXPIRE', k_seq, ttl)
    redis.call('EXPIRE', k_history, ttl)
  elseif redis.call('PTTL', k_epoch) >= 0 or redis.call('PTTL', k_seq) >= 0 then
    redis.call('PERSIST', k_epoch)
    redis.call('PERSIST', k_seq)
    redis.call('PERSIST', k_history)
  end
end

-- Number of presence entries of `user` in a room (any instance). Members
-- are `user|instance`; user names cannot contain '|' and every character
-- they may contain sorts before '|', so the lexical range
-- [user| .. (user} holds exactly this user's entries.
local function user_entries(k_presence, user)
  return redis.call('ZLEXCOUNT', k_presence, '[' .. user .. '|', '(' .. user .. '}')
end

-- Publishes a presence event on the room channel.
local function publish_presence(channel, kind, room, user, ts, extra)
  local env = { t = kind, room = room, user = user, ts = ts }
  if extra then
    for k, v in pairs(extra) do env[k] = v end
  end
  redis.call(PUBLISH, channel, cmsgpack.pack(env))
end

-- An origin (node, session) as envelope fields, or nil.
local function origin(node, session)
  if node == nil or node == '' then return nil end
  return { node = node, session = tonumber(session) }
end
