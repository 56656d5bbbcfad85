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
while i <= #ARGV do
  local queue_key, wake_key, n_messages = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, n_messages do
    redis.call("HSET", queue_key .. ".msgs", ARGV[i], ARGV[i + 1])
    redis.call("RPUSH", queue_key, ARGV[i])
    i = i + 2
  end
  for _ = 1, math.min(n_messages, max_tokens) do
    redis.call("LPUSH", wake_key, 1)
  end
  redis.call("LTRIM", wake_key, 0, max_tokens - 1)
end
return redis.status_reply("OK")
