// The kars offload protocol (internal/offload/protocol.go): one JSON
// object per mesh message. The host sends requests (offload, status, ack,
// handoff); the broker answers each (op "answer", re naming the request)
// and sends events (ready, ended, revoked). The task text never passes
// through the broker: the host declares its SHA-256 and size, and sends
// the text itself straight to the offload sandbox's router once the
// sandbox is ready.

import { createHash } from "node:crypto";

export const PROTOCOL_VERSION = 1;
export const MAX_MESSAGE = 64 << 10;
export const MAX_TITLE = 200;

/** A host's request. */
export interface Request {
  v: number;
  op: "offload" | "status" | "ack" | "handoff";
  id: string;
  offload?: string;
  task?: { title: string; sha256: string; bytes: number };
  limits?: Limits;
}

/** What the host asks the offload to stay within (the pairing's bounds apply on top). */
export interface Limits {
  max_tokens?: number;
  ttl_seconds?: number;
}

/** A refusal or failure, with a stable code (protocol.go Code*). */
export interface ProtocolError {
  code: string;
  message: string;
}

/** One offload as the broker describes it. */
export interface Info {
  id: string;
  phase: "Creating" | "Ready" | "Ending" | string;
  sandbox: string;
  did?: string;
  request?: string;
  title?: string;
  task_sha256?: string;
  created_at: string;
  expires_at: string;
  tokens_allocated: number;
  tokens_used: number;
  end_reason?: string;
}

/** A pairing's usage in a status answer. */
export interface Usage {
  name: string;
  capabilities: string[];
  slots: number;
  slots_in_use: number;
  expires_at: string;
  tokens_daily?: number;
  tokens_used: number;
  tokens_reserved: number;
}

/** The state summary of an offload handed back. */
export interface Handoff {
  offload: string;
  tokens_used: number;
  inferences: number;
  messages: number;
  tool_calls: { tool: string; decision: string; at: string }[];
  audit_seq: number;
  audit_hash: string;
  started_at: string;
  taken_at: string;
}

/** The broker's message: an answer or an event. */
export interface BrokerMessage {
  v: number;
  op: "answer" | "event";
  re?: string;
  event?: string;
  ok: boolean;
  error?: ProtocolError;
  offload?: Info;
  offloads?: Info[];
  handoff?: Handoff;
  pairing?: Usage;
}

const MESSAGE_FIELDS = new Set(["v", "op", "re", "event", "ok", "error", "offload", "offloads", "handoff", "pairing"]);

/** Decodes a broker message (offload.ParseMessage): version, op, and no unknown members. */
export function parseBrokerMessage(text: string): BrokerMessage {
  if (Buffer.byteLength(text) > MAX_MESSAGE) throw new Error(`message of ${Buffer.byteLength(text)} bytes, at most ${MAX_MESSAGE}`);
  const m = JSON.parse(text) as BrokerMessage;
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new Error("not a kars offload message: not an object");
  for (const k of Object.keys(m)) if (!MESSAGE_FIELDS.has(k)) throw new Error(`not a kars offload message: unknown field ${JSON.stringify(k)}`);
  if (m.v !== PROTOCOL_VERSION) throw new Error(`protocol version ${String(m.v)}; want ${PROTOCOL_VERSION}`);
  if (m.op === "answer" && !m.re) throw new Error('an answer names its request in "re"');
  if (m.op === "event" && !m.event) throw new Error('an event has an "event" name');
  if (m.op !== "answer" && m.op !== "event") throw new Error(`unknown op ${JSON.stringify(m.op)}`);
  return m;
}

/** What the user chose to offload: the only content that leaves the host. */
export interface TaskDescriptor {
  title: string;
  instruction: string;
  inputs?: { name: string; content: string }[];
  limits?: Limits;
}

/**
 * The task text sent to the offload sandbox: the instruction, then each
 * input the user named, delimited so the agent can tell them apart.
 */
export function taskText(t: TaskDescriptor): string {
  let s = t.instruction.trim();
  for (const i of t.inputs ?? []) s += `\n\n--- input: ${i.name} ---\n${i.content}\n--- end of ${i.name} ---`;
  return s;
}

/** The declaration an offload request carries for text. */
export function declare(title: string, text: string): { title: string; sha256: string; bytes: number } {
  return { title, sha256: createHash("sha256").update(text, "utf8").digest("hex"), bytes: Buffer.byteLength(text, "utf8") };
}

/** Checks a descriptor the way the broker will (offload.ParseRequest), so a bad one fails locally. */
export function checkDescriptor(t: TaskDescriptor): void {
  if (typeof t.title !== "string" || t.title === "" || Buffer.byteLength(t.title) > MAX_TITLE) throw new Error(`the title must be 1 to ${MAX_TITLE} bytes`);
  if (typeof t.instruction !== "string" || t.instruction.trim() === "") throw new Error("the instruction is empty");
  const n = Buffer.byteLength(taskText(t));
  if (n > 1 << 20) throw new Error(`the task is ${n} bytes, at most 1048576`);
  const l = t.limits;
  if (l && ((l.max_tokens ?? 0) < 0 || (l.ttl_seconds ?? 0) < 0 || (l.ttl_seconds ?? 0) > 86400)) {
    throw new Error("limits: max_tokens must not be negative, ttl_seconds must be 0 to 86400");
  }
}

/** An offload id: 8 lowercase hex digits. */
export const validOffloadID = (s: string): boolean => /^[0-9a-f]{8}$/.test(s);
