-- Put a batch of Dramatiq messages on their queues, in one atomic step.
--
-- For each message this writes what Dramatiq's dispatch.lua writes for an
-- "enqueue": the message data in the queue's `.msgs` hash under its
-- redis_message_id, and that id at the tail of the queue's list. Then, per
-- queue, it pushes one wake-up token per message (at most max_tokens) for
-- the consumers blocked on the queue's wake list. Before any message, it runs
-- the commands the messages' jobs need to find when they run (a chat's record).
--
-- A message may come with a "once" key: it is queued only if the key was not
-- set, and the key is then set for its time to live. That is how a replayed
-- delivery (the same svix-id) is dropped at the edge, in the same step.
--
-- ARGV: max_tokens, n_commands, then each command as its word count and its
-- words; then, for each queue: queue key, wake key, n_messages, then each
-- message as its redis_message_id, its data, its once key ("" for none) and
-- that key's time to live in seconds.
--
-- Returns, for each message in the order given, 1 if it was queued, 0 if its
-- once key was already set.

local max_tokens = tonumber(ARGV[1])
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n_words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n_words))
  i = i + 1 + n_words
end
-- Lua passes at most a few thousand values to one call: write in slices.
local SLICE = 500
local results = {}
while i <= #ARGV do
  local queue_key, wake_key, n_messages = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local fields, ids = {}, {}
  for _ = 1, n_messages do
    local once, ttl = ARGV[i + 2], ARGV[i + 3]
    if once == "" or redis.call("SET", once, "1", "NX", "EX", ttl) then
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i + 1]
      ids[#ids + 1] = ARGV[i]
      results[#results + 1] = 1
    else
      results[#results + 1] = 0
    end
    i = i + 4
  end
  for first = 1, #ids, SLICE do
    local last = math.min(first + SLICE - 1, #ids)
    redis.call("HSET", queue_key .. ".msgs", unpack(fields, 2 * first - 1, 2 * last))
    redis.call("RPUSH", queue_key, unpack(ids, first, last))
  end
  if #ids > 0 then
    local tokens = {}
    for k = 1, math.min(#ids, max_tokens) do
      tokens[k] = 1
    end
    redis.call("LPUSH", wake_key, unpack(tokens))
    redis.call("LTRIM", wake_key, 0, max_tokens - 1)
  end
end
return results
