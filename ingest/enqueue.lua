-- Put a batch of Dramatiq messages on their queues, in one atomic step.
--
-- For each message this writes what Dramatiq's dispatch.lua writes for an
-- "enqueue": the message data in the queue's `.msgs` hash under its
-- redis_message_id, and that id at the tail of the queue's list. Then, per
-- queue, it pushes one wake-up token per message (at most max_tokens) for
-- the consumers blocked on the queue's wake list. Before any message, it runs
-- the commands the messages' jobs need to find when they run (a chat's record).
--
-- ARGV: max_tokens, n_commands, then each command as its word count and its
-- words; then, for each queue: queue key, wake key, n_messages, then each
-- message as its redis_message_id and its data.

local max_tokens = tonumber(ARGV[1])
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n_words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n_words))
  i = i + 1 + n_words
end
-- Lua passes at most a few thousand values to one call: unpack in slices.
local SLICE = 500
while i <= #ARGV do
  local queue_key, wake_key, n_messages = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local ids = {}
  for first = 0, n_messages - 1, SLICE do
    local last = math.min(first + SLICE, n_messages) - 1
    -- (redis_message_id, data) pairs, straight from ARGV, into the hash.
    redis.call("HSET", queue_key .. ".msgs", unpack(ARGV, i + 2 * first, i + 2 * last + 1))
    for k = first, last do
      ids[k - first + 1] = ARGV[i + 2 * k]
    end
    redis.call("RPUSH", queue_key, unpack(ids, 1, last - first + 1))
  end
  i = i + 2 * n_messages
  local tokens = {}
  for k = 1, math.min(n_messages, max_tokens) do
    tokens[k] = 1
  end
  redis.call("LPUSH", wake_key, unpack(tokens))
  redis.call("LTRIM", wake_key, 0, max_tokens - 1)
end
return redis.status_reply("OK")
