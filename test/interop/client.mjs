// Drives kars-router with the official OpenAI npm SDK. Run by
// interop_test.go with the router's URLs in the environment. Prints
// "ok <check>" per passed check and exits non-zero on the first failure.
import OpenAI, { AzureOpenAI } from "openai";
import { VERSION } from "openai/version";

const BASE = process.env.KARS_ROUTER_URL;
const BUDGET_BASE = process.env.KARS_BUDGET_ROUTER_URL;
const AGENT_KEY = process.env.KARS_AGENT_KEY;
// The upstream's credentials, given to this test script only so it can check
// that none of them ever reaches the agent side.
const UPSTREAM_SECRETS = process.env.KARS_UPSTREAM_SECRETS.split(",");

const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: AGENT_KEY, maxRetries: 0 });
const msgs = (text) => [{ role: "user", content: text }];

function check(name, cond, detail) {
  if (!cond) {
    console.log(`FAIL ${name}: ${JSON.stringify(detail)}`);
    process.exit(1);
  }
  console.log(`ok ${name}`);
}

async function expectError(name, fn, pred) {
  try {
    await fn();
  } catch (err) {
    check(name, pred(err), { message: err.message, code: err.code, status: err.status });
    return;
  }
  check(name, false, "no error");
}

let r = await client.chat.completions.create({ model: "gpt-4.1", messages: msgs("hello from node"), max_tokens: 20 });
check("chat", r.choices[0].message.content && r.usage.total_tokens > 0, r);

const rawResp = await client.chat.completions.create({ model: "gpt-4.1", messages: msgs("#fake:echo-auth") }).asResponse();
const blob = (await rawResp.text()) + JSON.stringify([...rawResp.headers]);
check("no-upstream-credential", !UPSTREAM_SECRETS.some((s) => blob.includes(s)) && blob.includes("redacted"), blob);

// Azure's leading prompt_filter_results chunk has no choices; what must not
// appear is the usage chunk the router requested but the agent did not.
let text = "";
let usageChunks = 0;
for await (const chunk of await client.chat.completions.create({ model: "gpt-4.1", messages: msgs("stream"), stream: true })) {
  if (chunk.choices.length === 0 && chunk.usage) usageChunks++;
  for (const c of chunk.choices) text += c.delta.content ?? "";
}
check("chat-stream", text.startsWith("tok") && usageChunks === 0, { text, usageChunks });

let usage = null;
for await (const chunk of await client.chat.completions.create({
  model: "gpt-4.1", messages: msgs("usage"), stream: true, stream_options: { include_usage: true },
})) {
  if (chunk.usage) usage = chunk.usage;
}
check("chat-stream-usage", usage && usage.total_tokens > 0, usage);

const az = new AzureOpenAI({ endpoint: BASE, apiKey: AGENT_KEY, apiVersion: "2024-10-21", deployment: "my-deployment", maxRetries: 0 });
r = await az.chat.completions.create({ model: "my-deployment", messages: msgs("azure client") });
check("azure-chat", r.usage.total_tokens > 0, r);

const e = await client.embeddings.create({ model: "text-embedding-3-small", input: "embed me" });
check("embeddings", e.data.length === 1 && e.usage.prompt_tokens > 0, e);

const types = [];
for await (const ev of await client.responses.create({ model: "gpt-4.1", input: "respond", stream: true })) types.push(ev.type);
check("responses-stream", types.includes("response.completed"), types);

const ids = [];
for await (const m of client.models.list()) ids.push(m.id);
check("models", ids.includes("gpt-4.1") && ids.includes("kars-offline"), ids);

await expectError("content-filter",
  () => client.chat.completions.create({ model: "gpt-4.1", messages: msgs("#fake:hate=high") }),
  (err) => err instanceof OpenAI.BadRequestError && err.code === "content_filter" && err.message.includes("hate"));

const got = [];
await expectError("midstream-jailbreak", async () => {
  for await (const chunk of await client.chat.completions.create({ model: "gpt-4.1", messages: msgs("#fake:midstream-jailbreak"), stream: true })) {
    for (const c of chunk.choices) if (c.delta.content) got.push(c.delta.content);
  }
}, (err) => err instanceof OpenAI.APIError && got.length === 2 && err.message.includes("jailbreak"));

const small = new OpenAI({ baseURL: `${BUDGET_BASE}/v1`, apiKey: AGENT_KEY, maxRetries: 0 });
await small.chat.completions.create({ model: "gpt-4.1", messages: msgs("spend") });
await expectError("budget-429",
  () => small.chat.completions.create({ model: "gpt-4.1", messages: msgs("overspend") }),
  (err) => err instanceof OpenAI.RateLimitError && err.code === "kars_budget_daily" && err.message.includes("daily token budget"));

console.log("npm openai", VERSION, "all checks passed");
