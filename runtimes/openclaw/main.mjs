// kars adapter for OpenClaw (the openclaw package from npm).
//
// This launcher writes OpenClaw's configuration and runs the real OpenClaw
// gateway in the foreground. The sandbox's spec.runtime.openclaw.config is
// OpenClaw's own configuration; kars merges it under the keys kars must own
// (docs/runtimes.md lists them): the gateway listens on the contract's
// loopback port, the only model provider is kars-router, the workspace is
// /sandbox, and the kars plugin (plugin/) is loaded. The plugin puts every
// tool call to the router before it runs and serves the contract's chat
// endpoint on the gateway's own port - the same port OpenClaw's terminal UI
// and clients connect to.

import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as kars from "./kars-runtime.mjs";

const cfg = kars.config();
const app = path.dirname(fileURLToPath(import.meta.url));
const port = Number(cfg.listen.slice(cfg.listen.lastIndexOf(":") + 1));

function readUserConfig() {
  const p = process.env.KARS_AGENT_CONFIG || process.env.OPENCLAW_CONFIG_PATH;
  if (!p || !fs.existsSync(p)) return {};
  const v = JSON.parse(fs.readFileSync(p, "utf8"));
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error(`${p}: OpenClaw's configuration must be a JSON object`);
  return v;
}

const isObject = (v) => v && typeof v === "object" && !Array.isArray(v);

/** Deep merge: b's leaves win. */
function merge(a, b) {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = isObject(v) && isObject(a[k]) ? merge(a[k], v) : v;
  return out;
}

// The keys kars owns. Everything else is the user's OpenClaw configuration.
const owned = {
  gateway: {
    mode: "local",
    bind: "loopback",
    port,
    // The chat port is reachable only inside the sandbox (loopback of its
    // network namespace); kars connect reaches it through the pod.
    auth: { mode: "none" },
  },
  models: {
    mode: "merge",
    providers: {
      kars: {
        // kars-router: it drops this placeholder key and injects the real
        // credential, and it maps the model name to the deployment the
        // sandbox's InferencePolicy allows.
        baseUrl: process.env.OPENAI_BASE_URL || cfg.router + "/v1",
        apiKey: process.env.OPENAI_API_KEY || "kars-brokered",
        api: "openai-completions",
        models: [{ id: cfg.model, name: "kars-router" }],
      },
    },
  },
  agents: { defaults: { model: { primary: `kars/${cfg.model}` }, workspace: cfg.workspace } },
  plugins: { load: { paths: [path.join(app, "plugin")] }, entries: { kars: { enabled: true } } },
};

// Telegram: a CredentialBinding gives the agent a placeholder for its bot
// token (TELEGRAM_BOT_TOKEN) and, in KARS_CREDENTIALS, the Bot API's
// address. OpenClaw's own Telegram channel gets both; the router puts the
// real token in place on the way out (docs/credentials.md). How the channel
// answers (dmPolicy, allowFrom, groups) stays the user's configuration.
function telegramChannel() {
  const token = process.env.TELEGRAM_BOT_TOKEN;
  if (!token) return null;
  let creds;
  try {
    creds = JSON.parse(process.env.KARS_CREDENTIALS || "[]");
  } catch {
    console.error("kars: KARS_CREDENTIALS is not JSON; the Telegram channel stays off");
    return null;
  }
  const c = Array.isArray(creds) ? creds.find((c) => c.env === "TELEGRAM_BOT_TOKEN" && c.placeholder === token) : null;
  const ep = c?.endpoints?.find((e) => e.endsWith("/bot") && !e.endsWith("/file/bot"));
  if (!ep) {
    console.error("kars: no credential binding places TELEGRAM_BOT_TOKEN after a .../bot endpoint; the Telegram channel stays off");
    return null;
  }
  // apiRoot is the root only: OpenClaw appends /bot<token>/<method>.
  return { enabled: true, botToken: token, apiRoot: ep.slice(0, -"/bot".length) };
}
const telegram = telegramChannel();
if (telegram) owned.channels = { telegram };

const user = readUserConfig();
const conf = merge(merge({ tools: { profile: "minimal", alsoAllow: ["group:plugins"], toolSearch: false } }, user), owned);
conf.plugins.allow = [...new Set([...(user.plugins?.allow ?? []), "kars", ...(telegram ? ["telegram"] : [])])];
if (user.models?.providers) {
  // Other providers would hold credentials the sandbox must not have and
  // reach hosts only the router may reach.
  console.error("kars: ignoring models.providers other than kars-router in the OpenClaw configuration");
}

const confDir = fs.mkdtempSync(path.join(process.env.TMPDIR || "/tmp", "openclaw-"));
const confPath = path.join(confDir, "openclaw.json");
fs.writeFileSync(confPath, JSON.stringify(conf, null, 2), { mode: 0o600 });
if (process.env.KARS_INSTRUCTIONS && !fs.existsSync(path.join(cfg.workspace, "AGENTS.md"))) {
  // OpenClaw builds its system prompt from the workspace's AGENTS.md.
  fs.writeFileSync(path.join(cfg.workspace, "AGENTS.md"), process.env.KARS_INSTRUCTIONS + "\n", { mode: 0o600 });
}

// OpenClaw gives its state-lease worker a fixed 5 s to start; on a loaded
// machine that can pass and the gateway exits at start-up. A gateway that
// fails within its first minute is started again (three times at most),
// as a restarting container would be, without losing the pod.
const argv = [path.join(app, "node_modules", "openclaw", "openclaw.mjs"), "gateway", "run", "--port", String(port), "--bind", "loopback"];
const env = {
  ...process.env,
  // OpenClaw's state (sessions, transcripts) lives in the workspace, the
  // only place that survives a restart.
  OPENCLAW_STATE_DIR: path.join(cfg.workspace, ".openclaw"),
  OPENCLAW_CONFIG_PATH: confPath,
  KARS_RUNTIME_MODULE: path.join(app, "kars-runtime.mjs"),
};
let child;
let stopping = false;
let restarts = 0;
function start() {
  const started = Date.now();
  child = spawn(process.execPath, argv, { stdio: "inherit", env });
  child.on("exit", (code, signal) => {
    if (!stopping && code !== 0 && Date.now() - started < 60_000 && restarts < 3) {
      restarts++;
      console.error(`kars: the OpenClaw gateway exited during start-up (${code ?? signal}); starting it again (${restarts}/3)`);
      setTimeout(start, 1000);
      return;
    }
    process.exit(code ?? (signal ? 128 : 1));
  });
}
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) {
  process.on(sig, () => {
    stopping = true;
    child.kill(sig);
  });
}
start();
