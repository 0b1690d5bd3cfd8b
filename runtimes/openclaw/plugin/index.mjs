// The kars plugin for OpenClaw: what makes an OpenClaw gateway meet the
// kars runtime contract v1, through OpenClaw's own plugin API.
//
//   - before_tool_call: every tool call - OpenClaw's built-in tools and
//     plugin tools alike - is put to kars-router's decide endpoint first;
//     anything but "allow" blocks it, and the model sees the block reason
//     as the tool's error.
//   - the contract's default tools (calculator, current_time, list_files,
//     read_file, write_file) as plugin tools.
//   - the contract's chat endpoint as gateway HTTP routes: a turn is an
//     OpenClaw agent run in the session agent:main:kars-<id>
//     (api.runtime.subagent), so it uses OpenClaw's agent, transcript and
//     tools exactly as any other OpenClaw surface does.
//
// OpenClaw copies plugins before loading them (and loads them with
// require), so this file requires the shared contract module by the
// absolute path the launcher passes.

import { createRequire } from "node:module";

const kars = createRequire(import.meta.url)(process.env.KARS_RUNTIME_MODULE);
const cfg = kars.config();

const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;
const sessionKey = (id) => `agent:main:kars-${id}`;

// Tool calls of each run, for the turn's toolCalls. OpenClaw may load the
// plugin more than once (hooks and HTTP routes from different loads), so
// the record lives on the process.
const calls = (globalThis.__karsToolCalls ??= new Map());
const callsOf = (runId) => {
  if (!calls.has(runId)) calls.set(runId, []);
  return calls.get(runId);
};

function send(res, status, body) {
  const raw = body === undefined ? "" : JSON.stringify(body);
  res.statusCode = status;
  if (body !== undefined) res.setHeader("Content-Type", "application/json");
  res.end(raw);
  return true;
}
const fail = (res, status, message) => send(res, status, { error: { message, status } });

async function readJSON(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 1 << 20) throw Object.assign(new Error("request body exceeds 1 MiB"), { status: 413 });
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw Object.assign(new Error('body must be JSON like {"message":"hello"}'), { status: 400 });
  }
}

function text(content) {
  if (typeof content === "string") return content;
  return (content ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
}

/** The router's refusal status in a failed run's error, when there is one. */
function upstreamStatus(err) {
  const m = /\b(4\d\d)\b/.exec(String(err ?? ""));
  return m && ["401", "403", "429"].includes(m[1]) ? Number(m[1]) : 0;
}

export default {
  id: "kars",
  name: "kars",
  description: "kars runtime contract v1",
  register(api) {
    for (const t of kars.tools(cfg)) {
      api.registerTool({
        name: t.name,
        description: t.description,
        parameters: t.schema,
        async execute(_id, params) {
          return { content: [{ type: "text", text: kars.runTool(t, params) }] };
        },
      });
    }

    api.on("before_tool_call", async (event, ctx) => {
      const d = await kars.decide(cfg, event.toolName, event.params);
      const rec = { id: event.toolCallId ?? "", name: event.toolName, arguments: JSON.stringify(event.params ?? {}), decision: d.decision, reason: d.reason };
      callsOf(event.runId ?? ctx.runId).push(rec);
      if (!d.allowed) return { block: true, blockReason: kars.refusal(d) };
      return undefined;
    });
    api.on("after_tool_call", async (event, ctx) => {
      const rec = callsOf(event.runId ?? ctx.runId).findLast((c) => c.id === (event.toolCallId ?? "") && c.decision === "allow");
      if (rec) rec.result = event.error ? `error: ${event.error}` : text(event.result?.content);
    });

    const queues = new Map();
    const serial = (id, fn) => {
      const next = (queues.get(id) ?? Promise.resolve()).then(fn, fn);
      queues.set(id, next.catch(() => {}));
      return next;
    };

    const turn = async (id, message) => {
      const sub = api.runtime.subagent;
      let run;
      // The gateway answers HTTP before its agent runtime is up.
      for (let i = 0; ; i++) {
        try {
          run = await sub.run({ sessionKey: sessionKey(id), message, deliver: false });
          break;
        } catch (e) {
          if (i >= 120 || !/startup/.test(String(e.message))) throw e;
          await new Promise((r) => setTimeout(r, 500));
        }
      }
      const wait = await sub.waitForRun({ runId: run.runId, timeoutMs: 300_000 });
      const toolCalls = calls.get(run.runId) ?? [];
      calls.delete(run.runId);
      if (wait.status !== "ok") {
        const status = upstreamStatus(wait.error);
        throw Object.assign(new Error(String(wait.error ?? `the OpenClaw run ended ${wait.status}`)), { status: status || 502 });
      }
      const { messages } = await sub.getSessionMessages({ sessionKey: run.sessionKey ?? sessionKey(id), limit: 200 });
      let promptTokens = 0, completionTokens = 0, model = cfg.model, reply = wait.terminalReply?.text ?? "";
      for (const m of messages) {
        if (m.__openclaw?.runId !== run.runId || m.role !== "assistant") continue;
        promptTokens += m.usage?.input ?? 0;
        completionTokens += m.usage?.output ?? 0;
        model = m.responseModel ?? model;
        const t = text(m.content);
        if (t) reply = t;
      }
      return { session: id, reply, toolCalls, model, usage: { promptTokens, completionTokens } };
    };

    api.registerHttpRoute({
      path: "/v1/chat",
      auth: "gateway",
      handler: async (req, res) => {
        try {
          if (req.method !== "POST") return fail(res, 405, "POST a chat message");
          const body = await readJSON(req);
          if (typeof body?.message !== "string" || !body.message.trim()) return fail(res, 400, 'body must be JSON like {"message":"hello"}');
          const id = String(body.session || "default");
          if (!SESSION_ID.test(id)) return fail(res, 400, `session id ${JSON.stringify(id)}: use 1-64 letters, digits, '-' or '_'`);
          return send(res, 200, await serial(id, () => turn(id, body.message)));
        } catch (e) {
          return fail(res, e.status ?? 500, e.message);
        }
      },
    });
    api.registerHttpRoute({
      path: "/v1/sessions",
      match: "prefix",
      auth: "gateway",
      handler: async (req, res) => {
        const id = decodeURIComponent(new URL(req.url, "http://agent").pathname.replace(/^\/v1\/sessions\/?/, ""));
        if (!SESSION_ID.test(id)) return fail(res, 400, `session id ${JSON.stringify(id)}: use 1-64 letters, digits, '-' or '_'`);
        try {
          if (req.method === "DELETE") {
            await api.runtime.subagent.deleteSession({ sessionKey: sessionKey(id) });
            return send(res, 204);
          }
          const { messages } = await api.runtime.subagent.getSessionMessages({ sessionKey: sessionKey(id), limit: 500 });
          return send(res, 200, messages.filter((m) => m.role === "user" || m.role === "assistant")
            .map((m) => ({ role: m.role, content: text(m.content) })));
        } catch (e) {
          return fail(res, e.status ?? 500, e.message);
        }
      },
    });
  },
};
