// The openai npm package against aiwrap: one streamed completion, then one whole.
// Prints one JSON line: what each returned. Env: AIWRAP_BASE_URL, AIWRAP_KEY, AIWRAP_USER.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.AIWRAP_BASE_URL,
  apiKey: process.env.AIWRAP_KEY,
  defaultHeaders: { "X-User-Id": process.env.AIWRAP_USER },
  maxRetries: 0,
});
const messages = [{ role: "user", content: process.env.AIWRAP_PROMPT ?? "hello from node" }];

const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
const { data: whole, response } = await client.chat.completions
  .create({ model: "gpt-4o-mini", messages })
  .withResponse();
let error = null;
try {
  await client.chat.completions.create({ model: "gpt-4o-mini", messages, bogus_param: 1 });
} catch (e) {
  error = { name: e.constructor.name, status: e.status, param: e.param ?? null };
}
console.log(
  JSON.stringify({
    streamed,
    usage,
    whole: whole.choices[0].message.content,
    chatId: response.headers.get("x-chat-id"),
    error,
  }),
);
