"""The Lua scripts of the Redis state store. Each runs atomically on the server, so a
multi-key update is one round trip and no replica sees half of it; time is Redis time,
shared by every replica."""

# Token bucket on Redis time: KEYS[1]=bucket; ARGV: rate/s, burst, ttl_ms.
# Returns {allowed (0/1), retry_after_ms}.
TAKE_REQUEST = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return {allowed, retry}
"""

# Fixed-window token budget, all or nothing: KEYS[1]=prefix; ARGV: tokens, budget,
# window_s. Returns {allowed, retry_after_ms}.
RESERVE_TOKENS = """
local t = redis.call('TIME')
local window = tonumber(ARGV[3])
local index = math.floor(t[1] / window)
local key = KEYS[1] .. ':' .. index
local used = tonumber(redis.call('GET', key) or '0')
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + want > budget then
  return {0, ((index + 1) * window - t[1]) * 1000}
end
redis.call('INCRBY', key, want)
redis.call('EXPIRE', key, window * 2)
return {1, 0}
"""


def _give_back(prefix: str, tokens: str, window_s: str) -> str:
    """Lua that returns ``tokens`` to the budget window now current (never below 0; a
    window that has already ended is left alone). Arguments are Lua expressions."""
    return f"""
local t = redis.call('TIME')
local key = {prefix} .. ':' .. math.floor(t[1] / tonumber({window_s}))
if redis.call('EXISTS', key) == 1 then
  local left = redis.call('DECRBY', key, {tokens})
  if left < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
end
"""


# KEYS[1]=budget prefix; ARGV: tokens, window_s.
REFUND_TOKENS = _give_back("KEYS[1]", "tonumber(ARGV[1])", "ARGV[2]") + "return 0\n"

# Threshold nudge, clamped to [0, 1]: KEYS[1]=threshold; ARGV: delta, default.
NUDGE_THRESHOLD = """
local value = tonumber(redis.call('GET', KEYS[1]) or ARGV[2]) + tonumber(ARGV[1])
value = math.max(0, math.min(1, value))
redis.call('SET', KEYS[1], tostring(value), 'EX', 2592000)
return tostring(value)
"""

# Admission, all or nothing: the rate-limit bucket (token bucket, as TAKE_REQUEST) and the
# token budget (fixed window, as RESERVE_TOKENS) are both checked before either is written.
# KEYS[1]=bucket, KEYS[2]=budget prefix; ARGV: rate/s (0 = off), burst, bucket ttl_ms,
# tokens, budget (0 = off), window_s. Returns {0 | 1 (rate limit) | 2 (budget), retry_ms}.
ADMIT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, budget, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, key
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local at = tonumber(b[2]) or now
  tokens = math.min(burst, (tonumber(b[1]) or burst) + (now - at) * rate / 1000)
  if tokens < 1 then return {1, math.ceil((1 - tokens) * 1000 / rate)} end
end
if budget > 0 then
  local index = math.floor(t[1] / window)
  key = KEYS[2] .. ':' .. index
  if tonumber(redis.call('GET', key) or '0') + want > budget then
    return {2, ((index + 1) * window - t[1]) * 1000}
  end
end
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', now)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if budget > 0 then
  redis.call('INCRBY', key, want)
  redis.call('EXPIRE', key, window * 2)
end
return {0, 0}
"""

# Undo a granted ADMIT: KEYS as ADMIT; ARGV: rate/s (0 = off), burst, tokens, budget
# (0 = off), window_s. The bucket gets its token back (up to the burst), the budget its
# reservation (in the current window, never below 0).
UNADMIT = """
if tonumber(ARGV[1]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens')) or 0
  redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[2]), tokens + 1)))
end
if tonumber(ARGV[4]) > 0 then""" + _give_back("KEYS[2]", "tonumber(ARGV[3])", "ARGV[5]") + """end
return 0
"""

# A session write is applied once: a write that timed out on a frozen Redis may still run
# when it resumes, and the router replays the turns it kept locally meanwhile. The first
# of the two to run sets the write's marker (WRITE_MARKER_MS); the other finds it and
# adds nothing. Returns 0 when applied, 1 when the marker was already there.
_ONCE = """
if KEYS[{marker}] ~= '-' and not redis.call('SET', KEYS[{marker}], 1, 'NX', 'PX', ARGV[{ttl}]) then
  return 1
end
"""
# How long a write's marker lives: longer than a frozen Redis's late execution of a
# timed-out write can be apart from the router's replay of it (both follow the resume).
WRITE_MARKER_MS = 10 * 60 * 1000

# Session turns, once: KEYS[1]=session, KEYS[2]=write marker ('-': none); ARGV: session
# ttl_ms, marker ttl_ms, the turns (JSON).
APPEND_ONCE = _ONCE.format(marker=2, ttl=2) + """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

# A completed request's writes in one step: session turns, budget refund, response-cache
# entry, statistics. KEYS[1]=session, KEYS[2]=budget prefix, KEYS[3]=cache entry,
# KEYS[4]=statistics hash, KEYS[5]=write marker ('-': none). ARGV: number of turns,
# session ttl_ms, refund tokens, window_s, cache ttl_ms (0 = no entry), cache value,
# statistics ttl_s, marker ttl_ms, the turns (JSON), then statistic name/value pairs.
COMPLETE = _ONCE.format(marker=5, ttl=8) + """
local turns, i = tonumber(ARGV[1]), 9
if turns > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, i + turns - 1))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  i = i + turns
end
local refund = tonumber(ARGV[3])
if refund > 0 then""" + _give_back("KEYS[2]", "refund", "ARGV[4]") + """end
if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[5]) end
while i < #ARGV do
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('EXPIRE', KEYS[4], ARGV[7])
return 0
"""
