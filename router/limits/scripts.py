"""The two Lua scripts the Redis store runs: check-and-charge, and end.

Keys of one call (``P`` the key prefix, ``T`` the tenant, ``B`` the bucket)::

    P t:T:rq   sorted set  request charges, score = admission time (s)
    P t:T:tk   sorted set  token charges, score = admission time (s)
    P t:T:tkc  hash        token charge per member (integer tokens)
    P t:T:tks  string      sum of the token charges still in the window
    P b:B:ls   sorted set  leases (in flight), score = lease expiry (s)
    P b:B:q    sorted set  queued requests, score = predicted start (s)

Times are Redis's own (``TIME``: routers on different hosts share no clock) unless a call gives
``now`` (tests on a virtual clock). A charge made at ``t`` is in its window while
``t > now - window`` (the rule of :mod:`router.admission.ratelimit`); a lease counts while its
expiry is in the future, a queued request while its predicted start is. Redis runs a script
alone, so the check and the charge of one request see no other request in between.

Every key gets an expiry no shorter than what it holds needs, so an idle tenant or bucket
leaves nothing behind.
"""

from __future__ import annotations

__all__ = ["ADMIT", "END"]

ADMIT = """
-- One space-separated argument (each argument costs the client an encoding and a length).
local a = {}
for word in string.gmatch(ARGV[1], '%S+') do a[#a + 1] = word end
local now
if a[1] ~= '-' then
  now = tonumber(a[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local member = a[2]
local rpm, tpm, cost = tonumber(a[3]), tonumber(a[4]), tonumber(a[5])
local ccap, qcap = tonumber(a[6]), tonumber(a[7])
local wait, lease, window = tonumber(a[8]), tonumber(a[9]), tonumber(a[10])
local grace = tonumber(a[11])
local horizon = now - window

local function expire_at_least(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl < ms then redis.call('PEXPIRE', key, ms) end
end

local function newest_reset(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return tonumber(last[2]) + window - now
end

local function answer(status, retry, nreq, used, extra1, extra2)
  local rq_reset, tk_reset = 0, 0
  if rpm > 0 then rq_reset = newest_reset(KEYS[1]) end
  if tpm > 0 then tk_reset = newest_reset(KEYS[2]) end
  return {status, tostring(retry), nreq, tostring(rq_reset), used, tostring(tk_reset),
          extra1, extra2}
end

-- The tenant's windows: charges that left them are dropped (and leave the token sum).
local nreq, used = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
  nreq = redis.call('ZCARD', KEYS[1])
end
if tpm > 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
  local freed = 0
  for i = 1, #gone, 500 do
    local part = {unpack(gone, i, math.min(i + 499, #gone))}
    local amounts = redis.call('HMGET', KEYS[3], unpack(part))
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('HDEL', KEYS[3], unpack(part))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon) end
  if redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[4])
  elseif freed > 0 then
    redis.call('DECRBY', KEYS[4], freed)
  end
  used = tonumber(redis.call('GET', KEYS[4]) or '0')
end

if rpm > 0 and nreq >= rpm then
  -- the (nreq - rpm + 1)-th oldest must leave first
  local k = redis.call('ZRANGE', KEYS[1], nreq - rpm, nreq - rpm, 'WITHSCORES')
  return answer('tenant_rpm', tonumber(k[2]) + window - now, nreq, used, 0, 0)
end
if tpm > 0 and used + cost > tpm then
  local excess = used + cost - tpm
  local start = 0
  while true do
    local part = redis.call('ZRANGE', KEYS[2], start, start + 199, 'WITHSCORES')
    if #part == 0 then break end
    local names = {}
    for i = 1, #part, 2 do names[#names + 1] = part[i] end
    local amounts = redis.call('HMGET', KEYS[3], unpack(names))
    for i = 1, #names do
      excess = excess - (tonumber(amounts[i]) or 0)
      if excess <= 0 then
        return answer('tenant_tpm', tonumber(part[2 * i]) + window - now, nreq, used, 0, 0)
      end
    end
    start = start + 200
  end
  return answer('tenant_tpm', window, nreq, used, 0, 0)
end

-- The bucket's pod-wide caps: expired leases and started requests no longer count.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
if ccap >= 0 then
  local n = redis.call('ZCARD', KEYS[5])
  if n >= ccap then
    local retry = 0
    if ccap > 0 then
      local k = redis.call('ZRANGE', KEYS[5], n - ccap, n - ccap, 'WITHSCORES')
      retry = math.max(0, tonumber(k[2]) - grace - now)
    end
    return answer('concurrency', retry, nreq, used, n, 0)
  end
end
if qcap >= 0 and wait > 0 then
  local q = redis.call('ZCARD', KEYS[6])
  if q >= qcap then
    local retry = wait
    if qcap > 0 then
      local k = redis.call('ZRANGE', KEYS[6], q - qcap, q - qcap, 'WITHSCORES')
      retry = math.min(wait, tonumber(k[2]) - now)
    end
    return answer('queue_full', retry, nreq, used, 0, q)
  end
end

-- Everything fits: charge it all.
local window_ms = math.ceil(window * 1000) + 1000
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, member)
  expire_at_least(KEYS[1], window_ms)
  nreq = nreq + 1
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, member)
  redis.call('HSET', KEYS[3], member, cost)
  used = redis.call('INCRBY', KEYS[4], cost)
  expire_at_least(KEYS[2], window_ms)
  expire_at_least(KEYS[3], window_ms)
  expire_at_least(KEYS[4], window_ms)
end
if ccap >= 0 then
  redis.call('ZADD', KEYS[5], now + lease, member)
  expire_at_least(KEYS[5], math.ceil(lease * 1000) + 1000)
end
if qcap >= 0 and wait > 0 then
  redis.call('ZADD', KEYS[6], now + wait, member)
  expire_at_least(KEYS[6], math.ceil(wait * 1000) + 1000)
end
return answer('ok', 0, nreq, used, 0, 0)
"""
"""KEYS: the six keys above. ARGV[1]: space-separated now (``-`` for Redis's clock), member,
requests_per_minute, tokens_per_minute (0: none), cost_tokens, concurrency cap, queue cap (-1:
none), wait_s, lease_s, window_s, lease grace_s. Returns ``[status, retry_s, requests_used,
requests_reset_s, tokens_used, tokens_reset_s, in_flight, queued]``, the seconds as strings (a
Lua number would reach the client truncated to an integer); status ``ok`` or the reason over."""

END = """
local member, mode, give = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('ZREM', KEYS[5], member)
redis.call('ZREM', KEYS[6], member)
local charged = redis.call('HGET', KEYS[3], member)
if mode == 'refund' then
  redis.call('ZREM', KEYS[1], member)
  if charged then
    redis.call('ZREM', KEYS[2], member)
    redis.call('HDEL', KEYS[3], member)
    redis.call('DECRBY', KEYS[4], tonumber(charged))
  end
elseif charged and give > 0 then
  local back = math.min(give, tonumber(charged))
  redis.call('HSET', KEYS[3], member, tonumber(charged) - back)
  redis.call('DECRBY', KEYS[4], back)
end
return 1
"""
"""KEYS: the six keys above. ARGV: member, ``finish`` (the lease and queue place are given
back, ``give`` unused tokens refunded) or ``refund`` (the request never ran: every charge is
taken back), give. A charge already out of its window is left as it is (it counts no more)."""
