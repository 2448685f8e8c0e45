#!lua name=switchboard_v4

-- Switchboard schema 4: a cheaper publish (issue 9; docs/design/redis-cluster.md section 6).
-- Loaded next to switchboard_v1..v3; nodes of this version call switchboard_v4_publish,
-- switchboard_v4_publish_many, switchboard_v4_history, switchboard_v4_read and
-- switchboard_v4_range. The older functions stay loaded for nodes still running the older
-- build during a rolling upgrade (both kinds of node can publish on one channel at once).
-- Keys as in 0001_functions.lua and 0003_idempotent_publish.lua; the meta hash gains a
-- field `size` (the history_size the stream is trimmed to, written on each refresh).
--
-- What changed, and why. switchboard_v3_publish trimmed the stream exactly (XADD MAXLEN n,
-- which rewrites the stream's oldest node on every call) and ran two PEXPIREs per call:
-- about half of its cost. Here:
-- * XADD does not trim. Every 32nd offset (and on a refresh) `XTRIM MAXLEN ~ size` drops
--   whole stream nodes only, so the stream holds a little more than `size` entries (up to
--   about size + 100 + 32 with Redis's default stream-node-max-entries). The read functions
--   below take or read `size` and never answer an entry at or below `offset - size`, so a
--   client sees exactly what exact trimming would have kept.
-- * The TTLs are set only when the node asks (`refresh` = 1), which it does when it has not
--   refreshed the channel for a while (src/engine/redis/refresh.rs): at least every S/2,
--   S = min(history_ttl / 8, 30 s). The node sends TTLs already padded by S (history
--   ttl + S, meta ttl + grace + S), so history still lives at least history_ttl after each
--   publication, and at most history_ttl + S after the last one.
-- * A refresh is forced here when the channel's keys are new (the meta hash was created by
--   this call, or the stream did not exist): whatever the node remembers, new keys never
--   stay without a TTL.
-- * The pub/sub command is an argument: PUBLISH on one Redis, SPUBLISH on a Redis Cluster
--   (sharded pub/sub).

-- Returns the channel's epoch, and whether the meta hash was created (as switchboard_v1's
-- ensure_meta; a library cannot call another library's local functions).
local function ensure_meta(meta, history, candidate, meta_ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch, false
  end
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', candidate, 'offset', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  return candidate, true
end

-- An offset as Redis and the node read it: Lua prints numbers past 14 digits in exponent
-- form, which no stream id parses.
local function id(offset)
  return string.format('%.0f', offset) .. '-0'
end

local function pubsub_command(name)
  if name == 'PUBLISH' or name == 'SPUBLISH' then
    return name
  end
  return nil
end

-- Appends payloads[i] at offsets first, first + 1, ...; trims the stream when an offset of
-- the run is a multiple of 32 or on a refresh, and sets the TTLs on a refresh. Returns
-- whether a refresh was made (forced when the stream did not exist).
local function append(meta, history, first, payloads, size, ttl, meta_ttl, refresh)
  local last = first + #payloads - 1
  if size > 0 and ttl > 0 then
    for i, payload in ipairs(payloads) do
      local entry = id(first + i - 1)
      -- NOMKSTREAM: a missing stream answers nil here (false in Lua) instead of being
      -- created without a TTL unnoticed.
      if not redis.call('XADD', history, 'NOMKSTREAM', entry, 'p', payload) then
        redis.call('XADD', history, entry, 'p', payload)
        refresh = true
      end
    end
    if refresh or math.floor(last / 32) > math.floor((first - 1) / 32) then
      redis.call('XTRIM', history, 'MAXLEN', '~', size)
    end
    if refresh then
      redis.call('PEXPIRE', history, ttl)
    end
  end
  if refresh then
    redis.call('PEXPIRE', meta, meta_ttl)
    redis.call('HSET', meta, 'size', size)
  end
end

-- KEYS: meta, history[, idem]
-- ARGV (in this order):
--   1 epoch candidate      the epoch of the channel should its meta hash be missing
--   2 payload              {"data":..,"info":..}
--   3 history_size         0: no history
--   4 history_ttl_ms       the history TTL a refresh sets (the namespace's + S); 0: none
--   5 meta_ttl_ms          the meta TTL a refresh sets (history ttl + grace + S)
--   6 pubsub channel       <p>:ch:{ch}
--   7 refresh              1: set the TTLs (and trim); 0: leave them
--   8 pubsub command       PUBLISH or SPUBLISH
--   9 idem_window_ms       only with an idem key
-- Returns {offset, epoch, duplicate}: with an idem key that holds a result, publishes
-- nothing and returns {offset, epoch, 1} from it; else publishes
-- "p<offset>:<epoch>:<payload>" and, with an idem key, records "offset:epoch" under it for
-- idem_window_ms; returns {offset, epoch, 0}.
local function publish(keys, args)
  local meta, history, idem = keys[1], keys[2], keys[3]
  local size = tonumber(args[3])
  local ttl = tonumber(args[4])
  local meta_ttl = tonumber(args[5])
  local refresh = args[7] == '1'
  local command = pubsub_command(args[8])
  -- Checked before anything is written: an error after the publication would tell the
  -- caller it failed when it did not.
  if not (size and ttl and meta_ttl and command) then
    return redis.error_reply('ERR switchboard_v4_publish: bad arguments')
  end
  if idem then
    local window = tonumber(args[9])
    if not window or window <= 0 then
      return redis.error_reply('ERR switchboard_v4_publish: bad idempotency window')
    end
    local first = redis.call('GET', idem)
    if first then
      local offset, epoch = string.match(first, '^(%d+):(.*)$')
      if offset then
        -- The offset stays text: it goes back as it was stored, whatever its size.
        return {offset, epoch, 1}
      end
    end
  end
  local epoch, created = ensure_meta(meta, history, args[1], meta_ttl)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  append(meta, history, offset, {args[2]}, size, ttl, meta_ttl, refresh or created)
  redis.call(command, args[6], 'p' .. offset .. ':' .. epoch .. ':' .. args[2])
  if idem then
    redis.call('SET', idem, offset .. ':' .. epoch, 'PX', args[9])
  end
  return {offset, epoch, 0}
end

-- KEYS: meta, history
-- ARGV: 1-8 as switchboard_v4_publish's, without the payload at 2 (keep it empty), then
--       9.. one payload per publication
-- Several publications of one channel in one call, in argument order, none with an
-- idempotency key: offsets first..last in one HINCRBY, one XADD and one pub/sub message
-- per publication (so nodes read each as they read a single one), at most one trim.
-- Returns {last offset, epoch, count}; publication i has offset last - count + i.
local function publish_many(keys, args)
  local meta, history = keys[1], keys[2]
  local size = tonumber(args[3])
  local ttl = tonumber(args[4])
  local meta_ttl = tonumber(args[5])
  local refresh = args[7] == '1'
  local command = pubsub_command(args[8])
  local count = #args - 8
  if not (size and ttl and meta_ttl and command) or count < 1 then
    return redis.error_reply('ERR switchboard_v4_publish_many: bad arguments')
  end
  local payloads = {}
  for i = 1, count do
    payloads[i] = args[8 + i]
  end
  local epoch, created = ensure_meta(meta, history, args[1], meta_ttl)
  local last = redis.call('HINCRBY', meta, 'offset', count)
  local first = last - count + 1
  append(meta, history, first, payloads, size, ttl, meta_ttl, refresh or created)
  local prefix = ':' .. epoch .. ':'
  for i, payload in ipairs(payloads) do
    redis.call(command, args[6], 'p' .. string.format('%.0f', first + i - 1) .. prefix .. payload)
  end
  return {last, epoch, count}
end

-- The lowest offset a read may answer: everything at or below latest - size is gone under
-- exact trimming, whatever `XTRIM ~` left in the stream. nil: no bound (size unknown).
local function floor_of(latest, size)
  if not size then
    return nil
  end
  return latest - size + 1
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

-- {latest, epoch, entries...}: `count` entries from offset `from` oldest first, or the
-- newest `count` first when `from` is '0', none at or below `floor`.
local function read_entries(history, latest, epoch, from, count, floor)
  local out = {latest, epoch}
  if count <= 0 then
    return out
  end
  local entries
  if from ~= '0' then
    -- `from` stays a string unless the floor is above it: a client may send any offset,
    -- and Lua numbers lose digits past 2^53.
    local start = from
    if floor and tonumber(from) < floor then
      start = string.format('%.0f', floor)
    end
    entries = redis.call('XRANGE', history, start .. '-0', '+', 'COUNT', count)
  else
    local low = '-'
    if floor and floor > 1 then
      low = id(floor)
    end
    entries = redis.call('XREVRANGE', history, '+', low, 'COUNT', count)
  end
  append_entries(out, entries)
  return out
end

-- KEYS: meta, history
-- ARGV: epoch candidate, meta_ttl_ms, from offset (0: the newest), count, history_size
-- switchboard_v1_history (a subscription joining: creates the meta hash when missing),
-- answering nothing at or below latest - history_size.
local function history(keys, args)
  local meta, history = keys[1], keys[2]
  local epoch = ensure_meta(meta, history, args[1], tonumber(args[2]))
  local latest = tonumber(redis.call('HGET', meta, 'offset') or '0')
  local floor = floor_of(latest, tonumber(args[5]))
  return read_entries(history, latest, epoch, args[3], tonumber(args[4]), floor)
end

-- KEYS: meta, history
-- ARGV: from offset (0: the newest), count, history_size
-- switchboard_v2_read (a query: creates nothing; a channel without a meta hash answers
-- {0, ''}), answering nothing at or below latest - history_size.
local function read(keys, args)
  local meta, history = keys[1], keys[2]
  local state = redis.call('HMGET', meta, 'epoch', 'offset')
  if not state[1] then
    return {0, ''}
  end
  local latest = tonumber(state[2] or '0')
  local floor = floor_of(latest, tonumber(args[3]))
  return read_entries(history, latest, state[1], args[1], tonumber(args[2]), floor)
end

-- KEYS: meta, history
-- ARGV: from offset, to offset
-- switchboard_v1_range (the node's gap filler: creates nothing), answering nothing at or
-- below latest - size, with the size the publishing nodes recorded in the meta hash (the
-- gap filler does not know the channel's namespace).
local function range(keys, args)
  local meta, history = keys[1], keys[2]
  local state = redis.call('HMGET', meta, 'epoch', 'offset', 'size')
  local epoch = state[1] or ''
  local latest = tonumber(state[2] or '0')
  local out = {latest, epoch}
  local from = args[1]
  local floor = floor_of(latest, tonumber(state[3] or ''))
  if floor and tonumber(from) < floor then
    from = string.format('%.0f', floor)
  end
  if epoch ~= '' and tonumber(args[2]) >= tonumber(from) then
    append_entries(out, redis.call('XRANGE', history, from .. '-0', args[2] .. '-0'))
  end
  return out
end

redis.register_function('switchboard_v4_publish', publish)
redis.register_function('switchboard_v4_publish_many', publish_many)
redis.register_function('switchboard_v4_history', history)
redis.register_function{
  function_name = 'switchboard_v4_read',
  callback = read,
  flags = {'no-writes'},
}
redis.register_function{
  function_name = 'switchboard_v4_range',
  callback = range,
  flags = {'no-writes'},
}
