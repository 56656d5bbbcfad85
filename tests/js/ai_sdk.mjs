// The Vercel AI SDK's streamText through @ai-sdk/openai-compatible, against aiwrap.
// Prints one JSON line: the text and the usage. Env as openai_sdk.mjs.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { streamText } from "ai";

const aiwrap = createOpenAICompatible({
  name: "aiwrap",
  baseURL: process.env.AIWRAP_BASE_URL,
  apiKey: process.env.AIWRAP_KEY,
  headers: { "X-User-Id": process.env.AIWRAP_USER },
  includeUsage: true,
});
const result = streamText({
  model: aiwrap("gpt-4o-mini"),
  prompt: process.env.AIWRAP_PROMPT ?? "hello from the ai sdk",
});
let text = "";
for await (const piece of result.textStream) text += piece;
console.log(JSON.stringify({ text, usage: await result.usage, finishReason: await result.finishReason }));
