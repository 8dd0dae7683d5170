//! The Lua scripts of the Redis queue: one per operation, each prefixed with the shared
//! helpers of `scripts.lua` (which documents the keys they use), so every operation is atomic
//! on the server.

use redis::Script;

pub(super) struct Scripts {
    pub(super) send: Script,
    pub(super) receive: Script,
    pub(super) ack: Script,
    pub(super) extend: Script,
    pub(super) nack: Script,
    pub(super) stats: Script,
    pub(super) dlq_list: Script,
    pub(super) redrive: Script,
    pub(super) append: Script,
    pub(super) retention: Script,
}

const HELPERS: &str = include_str!("scripts.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{HELPERS}\n{body}"))
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            // ARGV: prefix, dedupe window ms, then per message: body, key, delay, ttl, dedupe.
            send: script(
                r#"
local p = ARGV[1]; local window = tonumber(ARGV[2])
local now = now_ms(); local out = {}
local acc = new_batch()
local n = (#ARGV - 2) / 5
local next_id = take_ids(p, n)
local i = 3
while i <= #ARGV do
  local body, key, delay, ttl, dd = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3]), ARGV[i+4]
  i = i + 5
  next_id = next_id + 1
  local id = id_of(next_id)
  -- A repeat of a dedupe id answers the message it named (its id then goes unused).
  local dup = false
  if dd ~= '' then dup = redis.call('SET', p .. ':dd:' .. dd, id, 'NX', 'PX', window, 'GET') end
  if dup then
    out[#out+1] = dup; out[#out+1] = 1
  else
    local exp = 0
    if ttl > 0 then exp = now + ttl end
    enqueue(p, acc, id, body, key, delay, exp, now, now)
    out[#out+1] = id; out[#out+1] = 0
  end
end
flush(p, acc)
wake(p)
return out
"#,
            ),
            // ARGV: prefix, dlq prefix, max, visibility ms, default max receives, max run.
            // Returns six values per message leased; with none, one: when something may be
            // due (ms from now, -1: nothing scheduled).
            receive: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local max, vis = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxr = max_receives(p, tonumber(ARGV[5]))
local maxrun = tonumber(ARGV[6])
local now = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':inflight', '-inf', now)) do
  redis.call('ZREM', p .. ':inflight', id)
  local f = redis.call('HMGET', p .. ':m:' .. id, 'c', 'lu', 'k')
  if tonumber(f[1]) >= maxr then
    dead_letter(p, d, id, now)
  elseif in_run(p, f[3], id) then
    rewait(p, f[3], id)
  else
    redis.call('HSET', p .. ':m:' .. id, 'l', 0)
    redis.call('ZADD', p .. ':vis', tonumber(f[2]), id)
  end
end
local out = {}; local got = 0
local lease_until = now + vis
-- The leases' entries in `inflight`, added together at the end.
local leased = {}
-- Lease a message whose hash `m` read `f` (e, k, b, f, c): its token is its receive count,
-- which no earlier lease of it had.
local function lease(id, m, f)
  local c = tonumber(f[5]) + 1
  redis.call('HSET', m, 'c', c, 'l', c, 'lu', lease_until)
  leased[#leased+1] = lease_until; leased[#leased+1] = id
  out[#out+1] = id; out[#out+1] = tostring(c); out[#out+1] = f[3]
  out[#out+1] = f[2]; out[#out+1] = c; out[#out+1] = f[4]
  got = got + 1
end
-- The run after a leased head of `key`: its next waiting messages, while due.
local function run(key)
  local kl, kr = p .. ':k:' .. key, p .. ':kr:' .. key
  if redis.call('LLEN', kr) > 0 then return end
  local n, taken, joined, more = 0, 0, {}, true
  while more and n < maxrun - 1 and got < max do
    local ids = redis.call('LRANGE', kl, taken, taken + math.min(maxrun - 1 - n, max - got) - 1)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      if n >= maxrun - 1 or got >= max then more = false; break end
      local m = p .. ':m:' .. id
      local f = redis.call('HMGET', m, 'e', 'k', 'b', 'f', 'c', 'v')
      if tonumber(f[6]) > now then more = false; break end
      taken = taken + 1
      local e = tonumber(f[1])
      if e > 0 and e <= now then
        redis.call('HINCRBY', p .. ':st', 'expired', 1)
        remove_msg(p, id)
      elseif tonumber(f[5]) >= maxr then
        dead_letter(p, d, id, now)
      else
        joined[#joined+1] = id
        lease(id, m, f)
        n = n + 1
      end
    end
  end
  if taken > 0 then
    redis.call('LTRIM', kl, taken, -1)
    redis.call('HINCRBY', p .. ':st', 'waiting', -taken)
  end
  many('RPUSH', kr, joined)
end
while got < max do
  local want = max - got
  local ids = redis.call('ZRANGEBYSCORE', p .. ':vis', '-inf', now, 'LIMIT', 0, want)
  if #ids == 0 then break end
  -- Fewer than asked for: no more are due, unless an expiry below makes a key's next one so.
  local again = #ids >= want
  local taken = {}
  for _, id in ipairs(ids) do
    if got >= max then break end
    taken[#taken+1] = id
    local m = p .. ':m:' .. id
    local f = redis.call('HMGET', m, 'e', 'k', 'b', 'f', 'c')
    local e = tonumber(f[1])
    if e > 0 and e <= now then
      redis.call('HINCRBY', p .. ':st', 'expired', 1)
      remove_msg(p, id)
      leave_key(p, f[2], id, now)
      again = true
    else
      lease(id, m, f)
      if maxrun > 1 and f[2] ~= '' then run(f[2]) end
    end
  end
  many('ZREM', p .. ':vis', taken)
  if not again then break end
end
many('ZADD', p .. ':inflight', leased)
if got == 0 then
  -- Nothing was due: in how many ms something may be (a delayed message, a lease that
  -- lapses), -1 if nothing is scheduled; what a long poll sleeps for at most when no send
  -- wakes it.
  local due = -1
  local v = redis.call('ZRANGE', p .. ':vis', 0, 0, 'WITHSCORES')
  if #v > 0 then due = tonumber(v[2]) end
  local l = redis.call('ZRANGE', p .. ':inflight', 0, 0, 'WITHSCORES')
  if #l > 0 and (due < 0 or tonumber(l[2]) < due) then due = tonumber(l[2]) end
  if due >= 0 then due = math.max(due - now, 0) end
  out[1] = due
end
return out
"#,
            ),
            // ARGV: prefix, then id, token pairs. One code per receipt.
            ack: script(
                r#"
local p = ARGV[1]; local now = now_ms(); local out = {}
-- The acked messages, removed together at the end (a receipt repeated in the batch is
-- unknown the second time, as if it came after).
local gone, hashes, seen = {}, {}, {}
local i = 2
while i <= #ARGV do
  local id, tok = ARGV[i], ARGV[i+1]
  i = i + 2
  local code, key = 1, nil
  if not seen[id] then code, key = check(p, id, tok, now) end
  if code == 0 then
    seen[id] = true
    gone[#gone+1] = id
    hashes[#hashes+1] = p .. ':m:' .. id
    leave_key(p, key, id, now)
  end
  out[#out+1] = code
end
many('ZREM', p .. ':inflight', gone)
many('ZREM', p .. ':all', gone)
many('DEL', nil, hashes)
return out
"#,
            ),
            // ARGV: prefix, id, token, visibility ms.
            extend: script(
                r#"
local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local code = check(p, id, tok, now)
if code == 0 then
  local lu = now + tonumber(ARGV[4])
  redis.call('HSET', p .. ':m:' .. id, 'lu', lu)
  redis.call('ZADD', p .. ':inflight', lu, id)
end
return code
"#,
            ),
            // ARGV: prefix, id, token, dlq prefix, delay ms, default max receives.
            nack: script(
                r#"
local p, id, tok, d = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local code, key = check(p, id, tok, now)
if code == 0 then
  local m = p .. ':m:' .. id
  redis.call('ZREM', p .. ':inflight', id)
  if tonumber(redis.call('HGET', m, 'c')) >= max_receives(p, tonumber(ARGV[6])) then
    dead_letter(p, d, id, now)
  elseif in_run(p, key, id) then
    -- A run member given back waits again behind its key's earlier messages.
    rewait(p, key, id)
    redis.call('HSET', m, 'v', now + tonumber(ARGV[5]))
  else
    redis.call('HSET', m, 'l', 0, 'lu', 0)
    redis.call('ZADD', p .. ':vis', now + tonumber(ARGV[5]), id)
  end
  wake(p)
end
return code
"#,
            ),
            // ARGV: prefix, dlq prefix.
            stats: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local now = now_ms()
local visible = redis.call('ZCOUNT', p .. ':vis', '-inf', now) + redis.call('ZCOUNT', p .. ':inflight', '-inf', now)
local in_flight = redis.call('ZCOUNT', p .. ':inflight', '(' .. now, '+inf')
local delayed = redis.call('ZCOUNT', p .. ':vis', '(' .. now, '+inf')
local st = redis.call('HMGET', p .. ':st', 'waiting', 'expired', 'dead')
local dlq = redis.call('ZCARD', d .. ':all')
local oldest = 0
local first = redis.call('ZRANGE', p .. ':all', 0, 0, 'WITHSCORES')
if #first > 0 then oldest = now - tonumber(first[2]) end
if oldest < 0 then oldest = 0 end
return {visible, in_flight, delayed, tonumber(st[1] or '0'), dlq, oldest,
        tonumber(st[2] or '0'), tonumber(st[3] or '0')}
"#,
            ),
            // ARGV: dlq prefix, max.
            dlq_list: script(
                r#"
local d = ARGV[1]; local out = {}
for _, id in ipairs(redis.call('ZRANGE', d .. ':all', 0, tonumber(ARGV[2]) - 1)) do
  local f = redis.call('HMGET', d .. ':m:' .. id, 'b', 'dc', 'f')
  out[#out+1] = id; out[#out+1] = f[1]; out[#out+1] = f[2] or '0'; out[#out+1] = f[3]
end
return out
"#,
            ),
            // ARGV: prefix, dlq prefix, max.
            redrive: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local now = now_ms(); local moved = 0
local ids = redis.call('ZRANGE', d .. ':all', 0, tonumber(ARGV[3]) - 1)
if #ids == 0 then return 0 end
local acc = new_batch()
local next_id = take_ids(p, #ids)
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', d .. ':m:' .. id, 'b', 'ok', 'f')
  next_id = next_id + 1
  enqueue(p, acc, id_of(next_id), f[1], f[2] or '', 0, 0, tonumber(f[3]), now)
  remove_msg(d, id)
  moved = moved + 1
end
flush(p, acc)
wake(p)
return moved
"#,
            ),
            // KEYS: stream, meta. ARGV: bodies. Returns offsets.
            append: Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSETNX', KEYS[2], 'first', 0)
local out = {}
for _, b in ipairs(ARGV) do
  local off = redis.call('HINCRBY', KEYS[2], 'next', 1) - 1
  redis.call('XADD', KEYS[1], '0-' .. (off + 1), 'b', b, 't', now)
  redis.call('HINCRBY', KEYS[2], 'bytes', #b)
  out[#out+1] = off
end
return out
"#,
            ),
            // KEYS: stream, meta. ARGV: max age ms (0 none), max bytes (-1 none).
            retention: Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_age, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[2], 'first', 'next', 'bytes')
local first, bytes = tonumber(meta[1] or '0'), tonumber(meta[3] or '0')
local removed = 0
while true do
  local entries = redis.call('XRANGE', KEYS[1], '0-' .. (first + 1), '+', 'COUNT', 100)
  if #entries == 0 then break end
  local stop = false
  for _, e in ipairs(entries) do
    local fields = e[2]; local body, ts = '', 0
    for j = 1, #fields, 2 do
      if fields[j] == 'b' then body = fields[j+1] elseif fields[j] == 't' then ts = tonumber(fields[j+1]) end
    end
    local old = max_age > 0 and ts < now - max_age
    local big = max_bytes >= 0 and bytes > max_bytes
    if old or big then
      redis.call('XDEL', KEYS[1], e[1])
      bytes = bytes - #body
      first = tonumber(string.match(e[1], '-(%d+)$'))
      removed = removed + 1
    else
      stop = true
      break
    end
  end
  if stop then break end
end
redis.call('HSET', KEYS[2], 'first', first, 'bytes', bytes)
return removed
"#,
            ),
        }
    }
}
