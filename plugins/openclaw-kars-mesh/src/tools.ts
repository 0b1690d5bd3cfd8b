// The plugin's tools, independent of OpenClaw's API object so the tests
// drive them directly: each takes its JSON parameters and returns the
// text the model sees plus structured details.

import { Host, Refused, type HostOptions, type OffloadRecord } from "./host.ts";
import type { TaskDescriptor } from "./offload.ts";

/** A tool as OpenClaw's api.registerTool takes it (JSON Schema parameters). */
export interface ToolDef {
  name: string;
  label: string;
  description: string;
  parameters: Record<string, unknown>;
  run(params: Record<string, unknown>): Promise<ToolResult>;
}

/** What a tool returns: text for the model, details for the host. */
export interface ToolResult {
  text: string;
  details: Record<string, unknown>;
  isError?: boolean;
}

/** Where the plugin keeps its state and which mesh edge it uses. */
export interface ToolConfig extends HostOptions {
  stateDir: string;
  /** Seconds kars_offload waits for the answer before returning (120). */
  offloadWaitSeconds?: number;
}

const obj = (props: Record<string, unknown>, required: string[] = []) => ({ type: "object", additionalProperties: false, properties: props, required });

function refusal(e: unknown): ToolResult {
  if (e instanceof Refused) {
    return { text: `kars refused: ${e.message} [${e.code}]`, details: { ok: false, code: e.code, message: e.message }, isError: true };
  }
  const m = (e as Error).message ?? String(e);
  return { text: `kars offload failed: ${m}`, details: { ok: false, message: m }, isError: true };
}

function describe(o: OffloadRecord): Record<string, unknown> {
  return {
    offload: o.info.id, phase: o.info.phase, sandbox: o.info.sandbox, title: o.title, expiresAt: o.info.expires_at,
    tokensAllocated: o.info.tokens_allocated, tokensUsed: o.info.tokens_used, endReason: o.info.end_reason,
    taskSent: Boolean(o.sentAt), result: o.result?.text, acknowledged: Boolean(o.acknowledged),
  };
}

function summary(o: OffloadRecord): string {
  if (o.result) {
    const end = o.acknowledged ? "acknowledged; its cloud sandbox is being deleted" : `still running: kars_offload_result acknowledges it, kars_offload_handoff takes it back`;
    return `Offload ${o.info.id} answered (${end}):\n\n${o.result.text}`;
  }
  if (o.info.phase === "Ending") return `Offload ${o.info.id} ended (${o.info.end_reason ?? "no reason given"}) without an answer.`;
  if (o.sentAt) return `Offload ${o.info.id} is working on the task in ${o.info.sandbox}; call kars_offload_result with offload "${o.info.id}" for the answer.`;
  return `Offload ${o.info.id} is ${o.info.phase === "Ready" ? "ready" : "starting"} (${o.info.sandbox}); call kars_offload_status or kars_offload_result with offload "${o.info.id}" to continue.`;
}

const seconds = (v: unknown, def: number, max: number): number => (typeof v === "number" && v >= 0 ? Math.min(v, max) : def) * 1000;

/** The tools, bound to one state folder. */
export function createTools(cfg: ToolConfig): ToolDef[] {
  const host = () => Host.open(cfg.stateDir, cfg);
  return [
    {
      name: "kars_pair",
      label: "Pair with kars",
      description:
        "Pair this OpenClaw host with a kars cluster, once, using the single-use pairing token the cluster's operator gave you. " +
        "Prefer the KARS_PAIRING_TOKEN environment variable; pass token only if the user pasted it. The token is redeemed and then discarded.",
      parameters: obj({ token: { type: "string", description: "The azc_pair_v1_… token, if not in KARS_PAIRING_TOKEN." } }),
      async run(p) {
        const fromEnv = typeof p.token !== "string" || p.token === "";
        let token = fromEnv ? (process.env.KARS_PAIRING_TOKEN ?? "") : (p.token as string);
        // The token is single-use: whatever happens, drop every copy this
        // process holds (a JavaScript string cannot be overwritten; losing
        // the references is as far as zeroization reaches).
        if (fromEnv) delete process.env.KARS_PAIRING_TOKEN;
        delete p.token;
        if (token === "") return { text: "No pairing token: set KARS_PAIRING_TOKEN or paste the token the operator gave you.", details: { ok: false }, isError: true };
        try {
          const h = host();
          const res = await h.pair(token);
          token = "";
          return {
            text: `Paired as "${res.name}" with the kars cluster (capabilities: ${res.capabilities.join(", ")}; expires ${res.expiresAt}). This host's mesh identity is ${h.id.did}.`,
            details: { ok: true, name: res.name, pairing: res.pairing, capabilities: res.capabilities, expiresAt: res.expiresAt, did: h.id.did, broker: res.issuer },
          };
        } catch (e) {
          token = "";
          return refusal(e);
        }
      },
    },
    {
      name: "kars_offload",
      label: "Offload to kars",
      description:
        "Offload a task to a governed kars cloud sandbox. Only what you put in the descriptor leaves this machine: the instruction and the inputs the user chose. " +
        "Returns the answer if it arrives in time, otherwise an offload id for kars_offload_status and kars_offload_result.",
      parameters: obj({
        title: { type: "string", description: "A short label for the operator (at most 200 bytes)." },
        instruction: { type: "string", description: "What the cloud agent should do." },
        inputs: { type: "array", description: "Inputs the user chose to send, each named.", items: obj({ name: { type: "string" }, content: { type: "string" } }, ["name", "content"]) },
        limits: obj({ max_tokens: { type: "integer", minimum: 0 }, ttl_seconds: { type: "integer", minimum: 0, maximum: 86400 } }),
        wait_seconds: { type: "number", minimum: 0, maximum: 600, description: "How long to wait for the answer (default 120)." },
        acknowledge: { type: "boolean", description: "End the offload (its cloud sandbox is deleted) once the answer is in hand (default true); false keeps it for kars_offload_handoff." },
      }, ["title", "instruction"]),
      async run(p) {
        const t: TaskDescriptor = { title: String(p.title ?? ""), instruction: String(p.instruction ?? "") };
        if (Array.isArray(p.inputs)) t.inputs = (p.inputs as { name: unknown; content: unknown }[]).map((i) => ({ name: String(i.name), content: String(i.content) }));
        if (p.limits && typeof p.limits === "object") t.limits = p.limits as TaskDescriptor["limits"] & object;
        try {
          const o = await host().offload(t, seconds(p.wait_seconds, cfg.offloadWaitSeconds ?? 120, 600), p.acknowledge !== false);
          return { text: summary(o), details: { ok: true, ...describe(o) } };
        } catch (e) {
          return refusal(e);
        }
      },
    },
    {
      name: "kars_offload_status",
      label: "kars offload status",
      description: "Report one offload (by id) or, without an id, every offload of this pairing and its usage (slots, tokens, expiry).",
      parameters: obj({ offload: { type: "string", description: "The offload id (8 hex digits)." } }),
      async run(p) {
        try {
          const h = host();
          const m = await h.status(typeof p.offload === "string" && p.offload ? p.offload : undefined);
          if (m.local) return { text: summary(m.local), details: { ok: true, ...describe(m.local), pairing: m.pairing } };
          const list = (m.offloads ?? []).map((i) => `${i.id} ${i.phase} ${i.sandbox}${i.title ? " " + JSON.stringify(i.title) : ""}`);
          const u = m.pairing;
          const head = u ? `Pairing ${u.name}: ${u.slots_in_use}/${u.slots} slots in use, ${u.tokens_used} tokens used, expires ${u.expires_at}.` : "";
          return { text: [head, list.length ? "Offloads:\n" + list.join("\n") : "No live offloads."].filter(Boolean).join("\n"), details: { ok: true, pairing: u, offloads: m.offloads ?? [] } };
        } catch (e) {
          return refusal(e);
        }
      },
    },
    {
      name: "kars_offload_result",
      label: "kars offload result",
      description: "Get the answer of an offload, waiting up to wait_seconds; once it is in hand the offload is acknowledged and its cloud sandbox deleted (acknowledge: false keeps it).",
      parameters: obj({
        offload: { type: "string", description: "The offload id (8 hex digits)." },
        wait_seconds: { type: "number", minimum: 0, maximum: 600 },
        acknowledge: { type: "boolean", description: "End the offload once the answer is in hand (default true)." },
      }, ["offload"]),
      async run(p) {
        try {
          const o = await host().result(String(p.offload ?? ""), seconds(p.wait_seconds, 60, 600), p.acknowledge !== false);
          return { text: summary(o), details: { ok: true, ...describe(o) }, isError: !o.result };
        } catch (e) {
          return refusal(e);
        }
      },
    },
    {
      name: "kars_offload_handoff",
      label: "kars offload handoff",
      description: "Take a running offload back to this host with its state summary (tokens used, tool decisions, audit head); needs the handoff capability.",
      parameters: obj({ offload: { type: "string", description: "The offload id (8 hex digits)." } }, ["offload"]),
      async run(p) {
        try {
          const m = await host().handoff(String(p.offload ?? ""));
          const h = m.handoff;
          return {
            text: h ? `Offload ${h.offload} handed back: ${h.inferences} model calls, ${h.tokens_used} tokens, ${h.tool_calls.length} tool decisions, audit head ${h.audit_seq}/${h.audit_hash}.` : "Handed back.",
            details: { ok: true, handoff: h },
          };
        } catch (e) {
          return refusal(e);
        }
      },
    },
  ];
}
