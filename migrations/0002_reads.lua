#!lua name=switchboard_v2

-- Switchboard schema 2: a history read that creates nothing (issue 11, item 8). Loaded next
-- to switchboard_v1, whose functions stay in use; keys as in 0001_functions.lua.
--
-- switchboard_v1_history creates a channel's meta hash when it is missing, which a
-- subscription joining needs (its position is then in the epoch the first publication will
-- carry). A `history` query does not: before this, one client reading 50,000 unknown
-- channels left 50,000 keys in Redis for a minute. The node now calls this for queries.

-- KEYS: meta, history
-- ARGV: from offset (0: the newest), count
-- Returns {offset, epoch, id, payload, ...} as switchboard_v1_history does, but a channel
-- without a meta hash answers {0, ''} (no epoch) and nothing is written.
local function read(keys, args)
  local meta, history = keys[1], keys[2]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    return {0, ''}
  end
  local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
  -- `from` stays a string: Lua numbers print in exponent form past 14 digits.
  local from = args[1]
  local count = tonumber(args[2])
  local out = {offset, epoch}
  if count > 0 then
    local entries
    if from ~= '0' then
      entries = redis.call('XRANGE', history, from .. '-0', '+', 'COUNT', count)
    else
      entries = redis.call('XREVRANGE', history, '+', '-', 'COUNT', count)
    end
    -- Flattened into id, payload, ... (a library cannot call another's local helpers).
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
  return out
end

redis.register_function{
  function_name = 'switchboard_v2_read',
  callback = read,
  flags = {'no-writes'},
}
