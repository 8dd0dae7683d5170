-- Helpers shared by every queue script (prepended to each). A queue `Q` lives under the
-- prefix `p` = "<namespace>:q:Q":
--   p:seq         counter of message ids
--   p:m:<id>      hash: b body, k key ('' none), c receive count, f first enqueued ms,
--                 e expiry ms (0 none), v visible-at from the send's delay, l lease token
--                 (the receive count of the lease; 0 none), lu lease until, dc deliveries
--                 before dead-lettering (DLQ only)
--   p:vis         zset id -> visible-at: schedulable messages (no key, or their key's head)
--   p:inflight    zset id -> lease until
--   p:all         zset id -> first enqueued ms (every message, for the oldest age)
--   p:kh          hash key -> id of the key's head (its first message; the one message of
--                 the key that may be visible, or the first of a run in flight)
--   p:kr:<key>    list of the rest of the key's run in flight (after the head), in send order
--   p:k:<key>     list of the key's waiting messages, in send order
--   p:dd:<id>     dedupe id -> message id, expiring with the dedupe window
--   p:st          hash: waiting, expired, dead (counters)
--   p:wake        list of at most one token: a receiver waiting for work blocks on it
--   p:cfg         hash: maxr (max receives, set by declare)
-- Time is the Redis server's clock (TIME), so every client agrees.
--
-- Every `redis.call` costs its own dispatch, and each write is its own entry in the
-- append-only file: the scripts gather what a batch adds to or removes from one sorted set
-- into one variadic command (`many`) and read each message's hash once (about 40% fewer
-- commands per message than one command per step; docs/benchmarks.md).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- `redis.call(cmd, key, unpack(args))` in pieces small enough for Lua's stack, if any.
-- `key` nil: `args` are the keys (DEL).
local function many(cmd, key, args)
  local n = #args
  local i = 1
  while i <= n do
    local j = math.min(i + 999, n)
    if key then
      redis.call(cmd, key, unpack(args, i, j))
    else
      redis.call(cmd, unpack(args, i, j))
    end
    i = j + 1
  end
end

-- Wake one waiting receiver of the queue (a long poll blocked on `p:wake`): a message became
-- visible that no clock foresaw (a send, a key freed by an ack, a nack, a redrive). The list
-- holds at most one token.
local function wake(p)
  redis.call('LPUSH', p .. ':wake', 1)
  redis.call('LTRIM', p .. ':wake', 0, 0)
end

local function remove_msg(p, id)
  redis.call('DEL', p .. ':m:' .. id)
  redis.call('ZREM', p .. ':all', id)
  redis.call('ZREM', p .. ':vis', id)
  redis.call('ZREM', p .. ':inflight', id)
end

-- The head of `key` left: the next waiting message of the key becomes its head.
local function release_key(p, key, now)
  if key == nil or key == '' then return end
  local nxt = redis.call('LPOP', p .. ':k:' .. key)
  if nxt then
    redis.call('HINCRBY', p .. ':st', 'waiting', -1)
    redis.call('HSET', p .. ':kh', key, nxt)
    local v = tonumber(redis.call('HGET', p .. ':m:' .. nxt, 'v') or '0')
    if v < now then v = now end
    redis.call('ZADD', p .. ':vis', v, nxt)
    wake(p)
  else
    redis.call('HDEL', p .. ':kh', key)
  end
end

-- A message of `key` left the queue. If it was the key's head, the next member of its run
-- becomes the head; with no run left, the next waiting message does.
local function leave_key(p, key, id, now)
  if key == nil or key == false or key == '' then return end
  if redis.call('HGET', p .. ':kh', key) == id then
    local nxt = redis.call('LPOP', p .. ':kr:' .. key)
    if nxt then
      redis.call('HSET', p .. ':kh', key, nxt)
    else
      release_key(p, key, now)
    end
  else
    redis.call('LREM', p .. ':kr:' .. key, 1, id)
  end
end

-- A run member (not its key's head) was given back or its lease lapsed: it waits again, in
-- send order among the key's waiting messages (ids are zero-padded, so they compare as text).
local function rewait(p, key, id)
  local kl = p .. ':k:' .. key
  local i = 0
  while true do
    local at = redis.call('LINDEX', kl, i)
    if not at then
      redis.call('RPUSH', kl, id)
      break
    end
    if at > id then
      redis.call('LINSERT', kl, 'BEFORE', at, id)
      break
    end
    i = i + 1
  end
  redis.call('LREM', p .. ':kr:' .. key, 1, id)
  redis.call('ZREM', p .. ':inflight', id)
  redis.call('HSET', p .. ':m:' .. id, 'l', 0, 'lu', 0)
  redis.call('HINCRBY', p .. ':st', 'waiting', 1)
end

-- Is this keyed message a run member rather than its key's head?
local function in_run(p, key, id)
  if key == nil or key == false or key == '' then return false end
  local head = redis.call('HGET', p .. ':kh', key)
  return head ~= false and head ~= nil and head ~= id
end

-- What enqueueing adds to the queue's sorted sets and counters, written once for a batch
-- (`flush`): nothing reads them before the script ends.
local function new_batch()
  return {all = {}, vis = {}, waiting = 0}
end

-- Enqueue a new message with id `id` (send and redrive).
local function enqueue(p, acc, id, body, key, delay, exp, first, now)
  redis.call('HSET', p .. ':m:' .. id, 'b', body, 'k', key, 'c', 0, 'f', first, 'e', exp,
    'v', now + delay, 'l', 0, 'lu', 0)
  local all = acc.all
  all[#all + 1] = first; all[#all + 1] = id
  if key ~= '' and redis.call('HSETNX', p .. ':kh', key, id) == 0 then
    redis.call('RPUSH', p .. ':k:' .. key, id)
    acc.waiting = acc.waiting + 1
  else
    local vis = acc.vis
    vis[#vis + 1] = now + delay; vis[#vis + 1] = id
  end
end

local function flush(p, acc)
  many('ZADD', p .. ':all', acc.all)
  many('ZADD', p .. ':vis', acc.vis)
  if acc.waiting > 0 then redis.call('HINCRBY', p .. ':st', 'waiting', acc.waiting) end
end

-- The next `n` message ids of the queue under `p`, as the number before the first.
local function take_ids(p, n)
  return redis.call('INCRBY', p .. ':seq', n) - n
end

local function id_of(n)
  return string.format('%016d', n)
end

-- Move a message to the dead-letter queue under prefix `d`.
local function dead_letter(p, d, id, now)
  local m = p .. ':m:' .. id
  local f = redis.call('HMGET', m, 'b', 'k', 'c', 'f')
  local did = id_of(take_ids(d, 1) + 1)
  redis.call('HSET', d .. ':m:' .. did, 'b', f[1], 'k', '', 'ok', f[2], 'c', 0, 'dc', f[3],
    'f', f[4], 'e', 0, 'v', now, 'l', 0, 'lu', 0)
  redis.call('ZADD', d .. ':vis', now, did)
  wake(d)
  redis.call('ZADD', d .. ':all', tonumber(f[4]), did)
  redis.call('HINCRBY', p .. ':st', 'dead', 1)
  remove_msg(p, id)
  leave_key(p, f[2], id, now)
end

local function max_receives(p, default)
  local v = redis.call('HGET', p .. ':cfg', 'maxr')
  if v then return tonumber(v) end
  return default
end

-- Check a receipt: 0 valid, 1 unknown (no such message), 2 expired (redelivered, nacked,
-- or its lease lapsed); and the message's key.
local function check(p, id, tok, now)
  local f = redis.call('HMGET', p .. ':m:' .. id, 'l', 'lu', 'k')
  if not f[1] then return 1 end
  if f[1] ~= tok then return 2, f[3] end
  if tonumber(f[2]) <= now then return 2, f[3] end
  return 0, f[3]
end
