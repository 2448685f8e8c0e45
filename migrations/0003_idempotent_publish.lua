#!lua name=switchboard_v3

-- Switchboard schema 3: publishing with an optional idempotency key (issue 9). Loaded next
-- to switchboard_v1 and switchboard_v2; nodes of this version call switchboard_v3_publish
-- instead of switchboard_v1_publish, which stays loaded for nodes still running the older
-- build during a rolling upgrade. Keys as in 0001_functions.lua, plus:
--   <p>:idem:{ch}:<key>    string "<offset>:<epoch>" of the first publication made with the
--                          key on the channel; expires after the namespace's
--                          idempotency_window
--
-- Why: a publish that timed out at the node may still have run here (Redis was slow, not
-- gone). The client cannot tell, and a plain retry would publish twice. With a key, the
-- retry finds the first result and publishes nothing. The check, the publication and the
-- record of the key are one function call, so they are atomic (and replicated as one
-- unit); the idem key carries the channel's hash tag, so it shares the channel's slot.

-- Returns the channel's epoch, creating the meta hash with `candidate` when it is missing
-- (as switchboard_v1 does; a library cannot call another library's local functions).
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

-- KEYS: meta, history[, idem]
-- ARGV: epoch candidate, payload, history_size, history_ttl_ms, meta_ttl_ms, pubsub channel
--       [, idem_window_ms]
-- Without an idem key: switchboard_v1_publish, returning {offset, epoch, 0}.
-- With one: when the key holds a result, publishes nothing and returns
-- {offset, epoch, 1} from it; else publishes, records "offset:epoch" under the key for
-- idem_window_ms and returns {offset, epoch, 0}.
local function publish(keys, args)
  local meta, history, idem = keys[1], keys[2], keys[3]
  local size = tonumber(args[3])
  local ttl = tonumber(args[4])
  local meta_ttl = tonumber(args[5])
  if idem then
    -- Checked before anything is written: an error after the publication would tell the
    -- caller it failed when it did not.
    local window = tonumber(args[7])
    if not window or window <= 0 then
      return redis.error_reply('ERR switchboard_v3_publish: bad idempotency window')
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
  local epoch = ensure_meta(meta, history, args[1], meta_ttl)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  if size > 0 and ttl > 0 then
    redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 'p', args[2])
    redis.call('PEXPIRE', history, ttl)
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  redis.call('PUBLISH', args[6], 'p' .. offset .. ':' .. epoch .. ':' .. args[2])
  if idem then
    redis.call('SET', idem, offset .. ':' .. epoch, 'PX', args[7])
  end
  return {offset, epoch, 0}
end

redis.register_function('switchboard_v3_publish', publish)
