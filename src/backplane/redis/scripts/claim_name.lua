-- Claim a guest name for an instance.
-- KEYS[1] token  KEYS[2] holders
-- ARGV[1] instance  ARGV[2] resume token ('' none)  ARGV[3] token for a new claim
-- ARGV[4] previous instance of the caller ('' none)  ARGV[5..] dead instances
-- Holders that are dead (or the caller's previous instance) are dropped. A
-- claim held by no other live instance is granted afresh with ARGV[3];
-- otherwise only the matching resume token shares it.
-- Returns {granted (0/1), token}.
local inst = ARGV[1]
local dead = {}
for i = 5, #ARGV do dead[ARGV[i]] = true end
if ARGV[4] ~= '' then redis.call('SREM', KEYS[2], ARGV[4]) end
local others = 0
for _, holder in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if dead[holder] then
    redis.call('SREM', KEYS[2], holder)
  elseif holder ~= inst then
    others = others + 1
  end
end
if others == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('SADD', KEYS[2], inst)
  return { 1, ARGV[3] }
end
local token = redis.call('GET', KEYS[1])
if token and ARGV[2] ~= '' and ARGV[2] == token then
  redis.call('SADD', KEYS[2], inst)
  return { 1, token }
end
redis.call('SREM', KEYS[2], inst)
return { 0, '' }
