#!lua name=switchboard_v1

-- Switchboard schema 1: the server-side functions of the Redis engine
-- (src/engine/redis.rs). Loaded with FUNCTION LOAD REPLACE by the migration runner, which
-- then records 1 in `<p>:schema`. Function names carry the schema version because Redis
-- function names are global: a later library (switchboard_v2) must be loadable next to this
-- one while nodes that still call v1 are running.
--
-- Keys (prefix p, channel ch; the {ch} hash tag keeps one channel in one cluster slot):
--   <p>:meta:{ch}          hash   offset, epoch
--   <p>:history:{ch}       stream entries <offset>-0 with field p = {"data":..,"info":..}
--   <p>:presence:{ch}      hash   client -> {"user":..,"node":..}
--   <p>:presence:{ch}:exp  zset   client -> expiry (server time, ms)
--   <p>:nodes              hash   node -> last beat (server time, ms)
--   <p>:subs:{node}        hash   channel -> local subscriber count of that node

-- Server time in milliseconds: every node compares against the same clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Returns the channel's epoch, creating the meta hash with `candidate` when it is missing.
-- A missing meta hash means a new epoch: any stream left over belongs to a forgotten one,
-- and its ids would collide with the restarted offsets, so it goes.
local function ensure_meta(meta, history, candidate, meta_ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch
  end
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', candidate, 'offset', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  return candidate
end

-- KEYS: meta, history
-- ARGV: epoch candidate, payload, history_size, history_ttl_ms, meta_ttl_ms, pubsub channel
-- Assigns the next offset, appends to history (trimmed, expiring), publishes
-- "p<offset>:<epoch>:<payload>" and returns {offset, epoch}.
local function publish(keys, args)
  local meta, history = keys[1], keys[2]
  local size = tonumber(args[3])
  local ttl = tonumber(args[4])
  local meta_ttl = tonumber(args[5])
  local epoch = ensure_meta(meta, history, args[1], meta_ttl)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  if size > 0 and ttl > 0 then
    redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 'p', args[2])
    redis.call('PEXPIRE', history, ttl)
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  redis.call('PUBLISH', args[6], 'p' .. offset .. ':' .. epoch .. ':' .. args[2])
  return {offset, epoch}
end

-- Flattens stream entries into id, payload, id, payload...
local function append_entries(out, entries)
  for _, e in ipairs(entries) do
    local fields = e[2]
    local payload = ''
    for i = 1, #fields, 2 do
      if fields[i] == 'p' then
        payload = fields[i + 1]
      end
    end
    table.insert(out, e[1])
    table.insert(out, payload)
  end
end

-- KEYS: meta, history
-- ARGV: epoch candidate, meta_ttl_ms, from offset (0: the newest), count
-- Returns {offset, epoch, id, payload, ...}: entries oldest first from `from`, or newest
-- first without it. Creates the meta hash when missing, so a channel read before its first
-- publication already has the epoch its first publication will carry.
local function history(keys, args)
  local meta, history = keys[1], keys[2]
  local epoch = ensure_meta(meta, history, args[1], tonumber(args[2]))
  local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
  -- `from` stays a string: Lua numbers print in exponent form past 14 digits, and a
  -- client may send any offset.
  local from = args[3]
  local count = tonumber(args[4])
  local out = {offset, epoch}
  if count > 0 then
    local entries
    if from ~= '0' then
      entries = redis.call('XRANGE', history, from .. '-0', '+', 'COUNT', count)
    else
      entries = redis.call('XREVRANGE', history, '+', '-', 'COUNT', count)
    end
    append_entries(out, entries)
  end
  return out
end

-- KEYS: meta, history
-- ARGV: from offset, to offset
-- Returns {offset, epoch or '', id, payload, ...} for offsets from..to, oldest first,
-- without creating anything: the node's gap filler. Offsets are decimal strings.
local function range(keys, args)
  local meta, history = keys[1], keys[2]
  local epoch = redis.call('HGET', meta, 'epoch') or ''
  local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
  local out = {offset, epoch}
  if epoch ~= '' and tonumber(args[2]) >= tonumber(args[1]) then
    append_entries(out, redis.call('XRANGE', history, args[1] .. '-0', args[2] .. '-0'))
  end
  return out
end

-- KEYS: presence hash, presence zset
-- ARGV: ttl_ms, client, info, client, info, ...
-- Adds or refreshes entries; each lives ttl_ms unless refreshed again.
local function presence_add(keys, args)
  local ttl = tonumber(args[1])
  local expiry = now_ms() + ttl
  for i = 2, #args, 2 do
    redis.call('HSET', keys[1], args[i], args[i + 1])
    redis.call('ZADD', keys[2], expiry, args[i])
  end
  redis.call('PEXPIRE', keys[1], ttl)
  redis.call('PEXPIRE', keys[2], ttl)
  return #args / 2
end

-- KEYS: presence hash, presence zset
-- Drops expired entries (their node died or lost Redis) and returns client, info, ...
local function presence_list(keys, args)
  local now = now_ms()
  local expired = redis.call('ZRANGEBYSCORE', keys[2], '-inf', now)
  for i = 1, #expired, 100 do
    redis.call('HDEL', keys[1], unpack(expired, i, math.min(i + 99, #expired)))
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', now)
  end
  return redis.call('HGETALL', keys[1])
end

-- KEYS: nodes hash, this node's subs hash
-- ARGV: node id, ttl_ms, channel, count, channel, count, ...
-- Records that the node is alive (server time) and its local subscriber counts.
local function node_beat(keys, args)
  redis.call('HSET', keys[1], args[1], now_ms())
  redis.call('DEL', keys[2])
  for i = 3, #args, 2 do
    redis.call('HSET', keys[2], args[i], args[i + 1])
  end
  redis.call('PEXPIRE', keys[2], tonumber(args[2]))
  return now_ms()
end

-- KEYS: nodes hash
-- ARGV: stale_ms
-- Forgets nodes not heard from within stale_ms and returns the live ones.
local function live_nodes(keys, args)
  local now = now_ms()
  local stale = tonumber(args[1])
  local all = redis.call('HGETALL', keys[1])
  local live = {}
  for i = 1, #all, 2 do
    if now - tonumber(all[i + 1]) > stale then
      redis.call('HDEL', keys[1], all[i])
    else
      table.insert(live, all[i])
    end
  end
  return live
end

redis.register_function('switchboard_v1_publish', publish)
redis.register_function('switchboard_v1_history', history)
redis.register_function{
  function_name = 'switchboard_v1_range',
  callback = range,
  flags = {'no-writes'},
}
redis.register_function('switchboard_v1_presence_add', presence_add)
redis.register_function('switchboard_v1_presence_list', presence_list)
redis.register_function('switchboard_v1_node_beat', node_beat)
redis.register_function('switchboard_v1_live_nodes', live_nodes)
