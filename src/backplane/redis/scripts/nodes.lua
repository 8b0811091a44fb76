-- Live node instances (liveness not expired, by Redis time).
-- KEYS[1] nodes
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')
