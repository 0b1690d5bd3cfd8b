// kars runtime contract v1 for Node adapter shims (docs/runtime-contract.md).
//
// Every Node shim imports this module for what the contract fixes and the
// frameworks do not: the chat endpoint (POST /v1/chat, GET/DELETE
// /v1/sessions/{id}, GET /healthz), sessions kept under /sandbox, the
// router's decide endpoint, and the default agent's tools (calculator,
// current_time, list_files, read_file, write_file). The framework itself -
// its agent loop, its model client, its tool hook - stays in the shim.
//
// Node's standard library only.

import { AsyncLocalStorage } from "node:async_hooks";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

export const CONTRACT = "v1";
const DEFAULT_INSTRUCTIONS = "You are a helpful assistant running in a governed kars sandbox.";
const MAX_BODY = 1 << 20;
const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The contract's environment. */
export function config(env = process.env) {
  const v = env.KARS_CONTRACT_VERSION ?? "";
  if (v && v !== CONTRACT) {
    throw new Error(`KARS_CONTRACT_VERSION=${JSON.stringify(v)}: this runtime implements contract ${CONTRACT}`);
  }
  return {
    router: (env.KARS_ROUTER_URL || "http://127.0.0.1:8443").replace(/\/+$/, ""),
    workspace: env.KARS_WORKSPACE || "/sandbox",
    listen: env.KARS_AGENT_LISTEN || "127.0.0.1:18789",
    instructions: env.KARS_INSTRUCTIONS || DEFAULT_INSTRUCTIONS,
    tools: (env.KARS_TOOLS || "").split(",").map((t) => t.trim()).filter(Boolean),
    code: env.KARS_AGENT_CODE || "",
    entrypoint: env.KARS_ENTRYPOINT || "",
    // The router maps any model name to the deployment its policy allows.
    model: env.KARS_MODEL || "default",
  };
}

/** A refusal from the router (budget 429, policy 403, ...), passed on with its status. */
export class UpstreamError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Finds the HTTP status of an SDK error anywhere in its cause chain. */
export function upstreamError(err) {
  for (let e = err, i = 0; e && i < 10; e = e.cause, i++) {
    const status = e.status ?? e.statusCode ?? e.response?.status;
    if (Number.isInteger(status) && status >= 400 && status < 600) {
      return new UpstreamError(status, e.error?.message ?? e.message ?? String(e));
    }
  }
  return null;
}

// --- Governance: every tool call is decided by the router first ----------

const turnCalls = new AsyncLocalStorage();

/** The text the model sees in place of a refused tool's result. */
export function refusal(d) {
  return `error: the kars policy refused this tool call (${d.decision}): ${d.reason}`;
}

/**
 * Asks the router whether the tool may run. Anything but an explicit allow
 * - including no answer - denies (fail closed).
 */
export async function decide(cfg, tool, args) {
  if (mcpNames.has(tool)) {
    // Decided and audited by the router's MCP gateway on tools/call.
    return { decision: "allow", reason: "decided and audited by the router's MCP gateway on tools/call", rule: "mcp-gateway", allowed: true };
  }
  try {
    const resp = await fetch(cfg.router + "/kars/v1/decide", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ action: "tool:" + tool, args: args && typeof args === "object" && !Array.isArray(args) ? args : {} }),
      signal: AbortSignal.timeout(30_000),
    });
    if (!resp.ok) {
      return { decision: "deny", reason: `no policy decision: the router answered ${resp.status}`, allowed: false };
    }
    const out = await resp.json();
    if (typeof out?.decision !== "string" || !out.decision) {
      return { decision: "deny", reason: "no policy decision: the router sent none", allowed: false };
    }
    return { decision: out.decision, reason: String(out.reason ?? ""), rule: String(out.rule ?? ""), allowed: out.decision === "allow" };
  } catch (e) {
    return { decision: "deny", reason: `no policy decision: ${e.message}`, allowed: false };
  }
}

/** Notes a governed tool call for the turn's toolCalls and returns the record. */
export function record(id, tool, args, d, result) {
  const rec = { id: id ?? "", name: tool, arguments: typeof args === "string" ? args : JSON.stringify(args ?? {}), decision: d.decision, reason: d.reason };
  if (result !== undefined) rec.result = result;
  turnCalls.getStore()?.push(rec);
  return rec;
}

// --- The default agent's tools --------------------------------------------

/** The runs of arithmetic characters in s that hold a digit. */
function arithmeticRuns(s) {
  return s.split(/[^0-9+\-*/(). ]/).map((r) => r.trim().replace(/^[ .]+|[ .]+$/g, "")).filter((r) => /[0-9]/.test(r));
}

const DATE_OR_VERSION = /\d{4}-\d{1,2}-\d{1,2}|\d+\.\d+\.\d+/;
const MULDIV = /[\d)]\s*[*/]\s*[\d(-]/;
const ADDSUB = /[\d)]\s*[+-]\s*[\d(-]/;

/**
 * Evaluates + - * / and parentheses. Free text (as the offline model sends
 * it, with whatever context a runtime adds before or after the user's
 * words - OpenClaw stamps dates and versions) is reduced to one arithmetic
 * run: dates and version numbers are skipped, then the first run with * or
 * /, else with + or -, else any run that evaluates to a finite number.
 */
export function calculate(expression) {
  const runs = arithmeticRuns(String(expression ?? "")).filter((r) => !DATE_OR_VERSION.test(r));
  if (!runs.length) throw new Error(`no arithmetic expression in ${JSON.stringify(expression)}`);
  const ordered = [...runs.filter((r) => MULDIV.test(r)), ...runs.filter((r) => !MULDIV.test(r) && ADDSUB.test(r))];
  ordered.push(...runs.filter((r) => !ordered.includes(r)));
  let first;
  for (const expr of ordered) {
    try {
      const v = evaluate(expr);
      if (!Number.isFinite(Number(v))) throw new Error(`${JSON.stringify(expr)} is not a finite number`);
      return v;
    } catch (e) {
      first ??= e;
    }
  }
  throw first;
}

function evaluate(expr) {
  let pos = 0;
  const space = () => { while (expr[pos] === " ") pos++; };
  const atom = (depth) => {
    space();
    if (expr[pos] === "(") {
      if (depth > 64) throw new Error("expression nests too deeply");
      pos++;
      const v = total(depth + 1);
      space();
      if (expr[pos] !== ")") throw new Error("missing ')'");
      pos++;
      return v;
    }
    if (expr[pos] === "-") { pos++; return -atom(depth + 1); }
    const start = pos;
    while (pos < expr.length && /[0-9.]/.test(expr[pos])) pos++;
    if (start === pos) throw new Error(`expected a number at ${JSON.stringify(expr.slice(start))}`);
    return Number(expr.slice(start, pos));
  };
  const product = (depth) => {
    let v = atom(depth);
    for (;;) {
      space();
      const op = expr[pos];
      if (op !== "*" && op !== "/") return v;
      pos++;
      const r = atom(depth);
      if (op === "*") v *= r;
      else if (r === 0) throw new Error("division by zero");
      else v /= r;
    }
  };
  const total = (depth) => {
    let v = product(depth);
    for (;;) {
      space();
      const op = expr[pos];
      if (op !== "+" && op !== "-") return v;
      pos++;
      const r = product(depth);
      v = op === "+" ? v + r : v - r;
    }
  };
  const v = total(0);
  space();
  if (pos !== expr.length) throw new Error(`unexpected ${JSON.stringify(expr.slice(pos))} in ${JSON.stringify(expr)}`);
  return String(Number(v.toPrecision(12)));
}

function workspacePath(cfg, rel) {
  rel = String(rel ?? "").trim();
  if (!rel) throw new Error("a path is required");
  const root = path.resolve(cfg.workspace);
  const p = path.resolve(root, rel.replace(/^\/+/, ""));
  if (p !== root && !p.startsWith(root + path.sep)) throw new Error(`path ${JSON.stringify(rel)} leaves the workspace`);
  if (path.relative(root, p).split(path.sep)[0] === ".kars-agent") throw new Error(`path ${JSON.stringify(rel)} is the agent's own state`);
  return p;
}

/**
 * The default agent's tools: name, description, JSON schema and run(args).
 * None reaches the network. KARS_TOOLS (spec.agent.tools) narrows the set.
 */
export function tools(cfg) {
  const str = (description) => ({ type: "string", description });
  const all = [
    { name: "calculator", description: "Evaluate an arithmetic expression with + - * / and parentheses.",
      schema: { type: "object", properties: { expression: str("the expression, e.g. 6*7") }, required: ["expression"] },
      run: (a) => calculate(a.expression) },
    { name: "current_time", description: "The current date and time in UTC.",
      schema: { type: "object", properties: {} },
      run: () => new Date().toISOString().replace(/\.\d+Z$/, "Z") },
    { name: "list_files", description: "List the files in the agent's workspace.",
      schema: { type: "object", properties: {} },
      run: () => {
        const out = [];
        const walk = (dir) => {
          for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
            if (e.name.startsWith(".")) continue;
            const p = path.join(dir, e.name);
            if (e.isDirectory()) walk(p);
            else out.push(path.relative(cfg.workspace, p));
          }
        };
        walk(cfg.workspace);
        return out.sort().join("\n");
      } },
    { name: "read_file", description: "Read a file from the agent's workspace.",
      schema: { type: "object", properties: { path: str("path relative to the workspace") }, required: ["path"] },
      run: (a) => fs.readFileSync(workspacePath(cfg, a.path), "utf8").slice(0, 64 << 10) },
    { name: "write_file", description: "Write a file in the agent's workspace.",
      schema: { type: "object", properties: { path: str("path relative to the workspace"), content: str("the text to write") }, required: ["path", "content"] },
      run: (a) => {
        const p = workspacePath(cfg, a.path);
        fs.mkdirSync(path.dirname(p), { recursive: true });
        fs.writeFileSync(p, String(a.content ?? ""), { mode: 0o600 });
        return `wrote ${Buffer.byteLength(String(a.content ?? ""))} bytes`;
      } },
  ];
  return cfg.tools.length ? all.filter((t) => cfg.tools.includes(t.name)) : all;
}

// --- The sandbox's MCP tools, through the router's MCP gateway -------------
//
// The router serves each MCP server the sandbox may use at /mcp/<server>
// (index at /kars/v1/mcp), lists only the tools the sandbox may call and
// decides and audits every tools/call itself. This client speaks the
// stateless 2026-07-28 revision over streamable HTTP: one JSON-RPC POST per
// request, the protocol version and client capabilities in _meta.

const MCP_PROTOCOL = "2026-07-28";
const mcpNames = new Set();

/** The name the model sees: mcp__<server>__<tool>, at most 64 characters. */
export function mcpToolName(server, tool) {
  return ("mcp__" + server + "__" + tool.replace(/[^A-Za-z0-9_-]/g, "_")).slice(0, 64);
}

async function mcpRequest(cfg, path, method, params) {
  const body = { jsonrpc: "2.0", id: 1, method, params: { ...params, _meta: {
    "io.modelcontextprotocol/protocolVersion": MCP_PROTOCOL, "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": { name: "kars-runtime-node", version: CONTRACT } } } };
  const headers = { "Content-Type": "application/json", Accept: "application/json, text/event-stream", "MCP-Protocol-Version": MCP_PROTOCOL, "Mcp-Method": method };
  // 2026-07-28 streamable HTTP mirrors the tool's name in a header.
  if (params.name !== undefined) headers["Mcp-Name"] = params.name;
  const resp = await fetch(cfg.router + path, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(120_000), headers });
  let raw = await resp.text();
  if ((resp.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    const datas = raw.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim());
    raw = datas.at(-1) ?? "{}";
  }
  const msg = JSON.parse(raw);
  if (msg.error) throw new Error(msg.error.message ?? "MCP error");
  return msg.result ?? {};
}

/**
 * The sandbox's MCP tools the gateway shows, shaped like tools(): name,
 * description, schema and an async run(args) that calls the tool through
 * the gateway. A server that does not answer yet is asked again a few
 * times; a router without servers gives none.
 */
export async function mcpTools(cfg, attempts = 3) {
  let servers = [];
  try {
    const resp = await fetch(cfg.router + "/kars/v1/mcp", { signal: AbortSignal.timeout(10_000) });
    servers = (await resp.json()).servers ?? [];
  } catch {
    return [];
  }
  const out = [];
  for (const s of servers) {
    let listed = [];
    for (let i = 0; i < attempts; i++) {
      try {
        listed = (await mcpRequest(cfg, s.path, "tools/list", {})).tools ?? [];
        break;
      } catch {
        if (i + 1 < attempts) await new Promise((r) => setTimeout(r, 2000));
      }
    }
    for (const t of listed) {
      const name = mcpToolName(s.name, t.name);
      if (mcpNames.has(name)) continue;
      mcpNames.add(name);
      out.push({
        name, mcp: true,
        description: t.description || `Tool ${t.name} of the MCP server ${s.name}`,
        schema: t.inputSchema ?? { type: "object", properties: {} },
        run: async (args) => {
          const res = await mcpRequest(cfg, s.path, "tools/call", { name: t.name, arguments: args ?? {} });
          let text = (res.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("");
          if (!text && res.structuredContent !== undefined) text = JSON.stringify(res.structuredContent);
          return res.isError && !text.startsWith("kars policy:") ? "error: " + text : text;
        },
      });
    }
  }
  return out;
}

/**
 * Runs a default tool, turning its failure into the text the model sees.
 * An MCP tool's run is asynchronous: its Promise is returned.
 */
export function runTool(t, args) {
  if (t.mcp) return t.run(args ?? {}).catch((e) => `error: ${e.message}`);
  try {
    return String(t.run(args ?? {}));
  } catch (e) {
    return `error: ${e.message}`;
  }
}

// --- Sessions and the chat endpoint ---------------------------------------------

class Sessions {
  constructor(cfg) {
    this.dir = path.join(cfg.workspace, ".kars-agent", "sessions");
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.queues = new Map();
  }
  path(id) {
    if (!SESSION_ID.test(id)) throw Object.assign(new Error(`session id ${JSON.stringify(id)}: use 1-64 letters, digits, '-' or '_'`), { status: 400 });
    return path.join(this.dir, id + ".json");
  }
  load(id) {
    try {
      return JSON.parse(fs.readFileSync(this.path(id), "utf8"));
    } catch (e) {
      if (e.code === "ENOENT") return { state: null, transcript: [] };
      throw e;
    }
  }
  save(id, data) {
    const p = this.path(id);
    fs.writeFileSync(p + ".tmp", JSON.stringify(data), { mode: 0o600 });
    fs.renameSync(p + ".tmp", p);
  }
  delete(id) {
    fs.rmSync(this.path(id), { force: true });
  }
  /** Serialises the turns of one session. */
  serial(id, fn) {
    const prev = this.queues.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.queues.set(id, next.catch(() => {}));
    return next;
  }
}

/**
 * Serves the contract's chat endpoint. adapter(state, message) runs one turn
 * and returns {reply, state, model, promptTokens, completionTokens}.
 */
export function serve(framework, cfg, adapter) {
  const sessions = new Sessions(cfg);
  const send = (res, status, body) => {
    const raw = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, body === undefined ? {} : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(raw) });
    res.end(raw);
  };
  const fail = (res, status, message) => send(res, status, { error: { message, status } });
  const chat = (id, message) => sessions.serial(id, async () => {
    if (!message.trim()) throw Object.assign(new Error("empty message"), { status: 400 });
    const data = sessions.load(id);
    const calls = [];
    const turn = await turnCalls.run(calls, () => adapter(data.state, message));
    data.state = turn.state;
    data.transcript.push({ role: "user", content: message }, { role: "assistant", content: turn.reply, toolCalls: calls });
    sessions.save(id, data);
    return { session: id, reply: turn.reply, toolCalls: calls, model: turn.model ?? cfg.model,
      usage: { promptTokens: turn.promptTokens ?? 0, completionTokens: turn.completionTokens ?? 0 } };
  });
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://agent");
      if (req.method === "GET" && url.pathname === "/healthz") {
        return send(res, 200, { status: "ok", contract: CONTRACT, framework });
      }
      if (url.pathname.startsWith("/v1/sessions/")) {
        const id = decodeURIComponent(url.pathname.slice("/v1/sessions/".length));
        if (req.method === "GET") return send(res, 200, sessions.load(id).transcript);
        if (req.method === "DELETE") { sessions.delete(id); return send(res, 204); }
      }
      if (req.method !== "POST" || url.pathname !== "/v1/chat") return fail(res, 404, "not found");
      const chunks = [];
      let size = 0;
      for await (const c of req) {
        size += c.length;
        if (size > MAX_BODY) return fail(res, 413, "request body exceeds 1 MiB");
        chunks.push(c);
      }
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        return fail(res, 400, 'body must be JSON like {"message":"hello"}');
      }
      if (typeof body?.message !== "string") return fail(res, 400, 'body must be JSON like {"message":"hello"}');
      send(res, 200, await chat(String(body.session || "default"), body.message));
    } catch (e) {
      const up = e instanceof UpstreamError ? e : upstreamError(e);
      if (up) return fail(res, up.status, up.message);
      if (e.status === 400) return fail(res, 400, e.message);
      console.error(e);
      fail(res, 500, `${e.name}: ${e.message}`);
    }
  });
  const i = cfg.listen.lastIndexOf(":");
  server.listen(Number(cfg.listen.slice(i + 1)), cfg.listen.slice(0, i) || "127.0.0.1", () => {
    console.log(`kars ${framework} runtime: contract ${CONTRACT}, chat endpoint on ${cfg.listen}`);
  });
  return server;
}
