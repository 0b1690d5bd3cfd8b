// The AgentMesh Wire Protocol 1.0 envelope as kars speaks it
// (internal/mesh/wire): JSON frames (§9), KNOCK signatures over the RFC
// 8785 canonical frame without its signature (§10), the Ed25519-Timestamp
// authorization (§13.1) and the relay's connect proof (§12.2). Pure:
// parsers take text and return values or throw.

import { b64, b64std, unb64, unb64Fixed } from "./b64.ts";
import { Identity, ed25519Verify, validDID } from "./identity.ts";
import { canonicalize } from "./jcs.ts";

/** The protocol version (§15.1). */
export const VERSION = 1;

/** Frame types (§9.2). */
export const T = {
  connect: "connect",
  disconnect: "disconnect",
  knock: "knock",
  knockAccept: "knock_accept",
  knockReject: "knock_reject",
  message: "message",
  ack: "ack",
  prekeyRequest: "prekey_request",
  prekeyResponse: "prekey_response",
  prekeyUpload: "prekey_upload",
  heartbeat: "heartbeat",
  error: "error",
} as const;

/** The largest frame a parser accepts. */
export const MAX_FRAME_BYTES = 1 << 20;

/** A ratchet header in JSON (§9.3). */
export interface MessageHeader {
  dh: string;
  pn: number;
  n: number;
}

/** The x3dh field of a session's first messages (§9.4, kars's identity_key_ed). */
export interface X3DHInit {
  identity_key: string;
  ephemeral_key: string;
  used_opk_id: number | null;
  identity_key_ed?: string;
}

/** What a KNOCK asks for (§10.1). */
export interface Intent {
  action: string;
  description?: string;
  capabilities_required?: string[];
  trust_minimum?: number;
}

/** What a knock_accept grants (§10.2). */
export interface Conditions {
  max_messages?: number;
  ttl_seconds?: number;
  allowed_actions?: string[];
}

/** One protocol frame; only the fields its type uses are set. */
export interface Frame {
  v: number;
  type: string;
  from?: string;
  to?: string;
  id?: string;
  ts?: string;
  header?: MessageHeader;
  ciphertext?: string;
  x3dh?: X3DHInit;
  intent?: Intent;
  knock_id?: string;
  conditions?: Conditions;
  reason?: string;
  signature?: string;
  auth?: { timestamp: string; signature: string };
  public_key?: string;
  timestamp?: string;
  supported_versions?: number[];
  receipts?: boolean;
  status?: string;
  detail?: string;
}

const ROUTED = new Set<string>([T.message, T.knock, T.knockAccept, T.knockReject]);
const KNOWN = new Set<string>(Object.values(T));

function bad(msg: string): Error {
  return new Error("wire: invalid frame: " + msg);
}

const isUint32 = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;

/** Decodes and checks one frame (internal/mesh/wire.Parse). A missing "v" reads as 1. */
export function parseFrame(text: string): Frame {
  if (Buffer.byteLength(text) > MAX_FRAME_BYTES) throw bad(`frame exceeds ${MAX_FRAME_BYTES} bytes`);
  let f: Frame;
  try {
    f = JSON.parse(text) as Frame;
  } catch (e) {
    throw bad(String(e));
  }
  if (typeof f !== "object" || f === null || Array.isArray(f)) throw bad("not a JSON object");
  f.v ??= VERSION;
  if (f.v !== VERSION) throw bad(`version ${String(f.v)} unsupported (this implementation speaks ${VERSION})`);
  if (typeof f.type !== "string" || !KNOWN.has(f.type)) throw bad(`unknown frame type ${JSON.stringify(f.type)}`);
  for (const k of ["from", "to", "id", "ts", "ciphertext", "knock_id", "reason", "signature", "status", "detail"] as const) {
    if (f[k] !== undefined && typeof f[k] !== "string") throw bad(`${k} is not a string`);
  }
  if ((f.id?.length ?? 0) > 128 || (f.ts?.length ?? 0) > 64) throw bad("id or ts is too long");
  if (f.from && !validDID(f.from)) throw bad(`from ${JSON.stringify(f.from)} is not a DID`);
  if (f.to && !validDID(f.to)) throw bad(`to ${JSON.stringify(f.to)} is not a DID`);
  if (ROUTED.has(f.type) && (!f.from || !f.to || !f.id)) throw bad(`${f.type} frame needs from, to and id`);
  if (f.type === T.ack && !f.id) throw bad("ack frame needs id");
  if (f.type === T.message) {
    const h = f.header;
    if (!h || typeof h !== "object" || !f.ciphertext) throw bad("message frame needs header and ciphertext");
    unb64Fixed(h.dh, 32, "header dh");
    if (!isUint32(h.pn) || !isUint32(h.n)) throw bad("header pn and n must be 32-bit unsigned integers");
    if (unb64(f.ciphertext).length < 12 + 16) throw bad("ciphertext is shorter than nonce and tag");
    if (f.x3dh) {
      unb64Fixed(f.x3dh.identity_key, 32, "x3dh identity_key");
      unb64Fixed(f.x3dh.ephemeral_key, 32, "x3dh ephemeral_key");
      if (f.x3dh.used_opk_id != null && !isUint32(f.x3dh.used_opk_id)) throw bad("x3dh used_opk_id");
      if (f.x3dh.identity_key_ed) unb64Fixed(f.x3dh.identity_key_ed, 32, "x3dh identity_key_ed");
    }
  }
  if (f.type === T.knock) {
    const i = f.intent;
    if (!i || typeof i.action !== "string" || i.action === "" || i.action.length > 256) throw bad("knock frame needs an intent action");
  }
  if ((f.type === T.knockAccept || f.type === T.knockReject) && (!f.knock_id || f.knock_id.length > 128)) {
    throw bad(`${f.type} frame needs knock_id`);
  }
  return f;
}

/**
 * The bytes a frame's signature covers: the RFC 8785 canonical form of
 * the JSON object without its "signature" member
 * (internal/mesh/wire.SigningBytes).
 */
export function signingBytes(raw: string | Record<string, unknown>): Buffer {
  const obj = typeof raw === "string" ? (JSON.parse(raw) as unknown) : raw;
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw bad("signed frame is not a JSON object");
  const copy = { ...(obj as Record<string, unknown>) };
  delete copy.signature;
  // Frames nest shallowly; 32 bounds what a hostile one costs.
  return Buffer.from(canonicalize(copy, 32), "utf8");
}

/** Sets f.signature to Ed25519 over signingBytes(f) (§10; the whole frame is bound). */
export function signFrame(f: Frame, id: Identity): Frame {
  delete f.signature;
  f.signature = b64(id.sign(signingBytes(f as unknown as Record<string, unknown>)));
  return f;
}

/** Checks the signature of a frame as received (its raw text) against pub. */
export function verifyFrame(raw: string, pub: Uint8Array): boolean {
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    return false;
  }
  const sig = obj?.signature;
  if (typeof sig !== "string" || sig === "") return false;
  let s: Buffer;
  try {
    s = unb64(sig);
  } catch {
    return false;
  }
  return ed25519Verify(pub, signingBytes(obj), s);
}

let lastNs = 0n;

/**
 * An RFC 3339 UTC timestamp with nanosecond digits that increases on
 * every call: the registry and relay refuse a (DID, timestamp) pair they
 * have seen (wire.ReplayGuard), so two requests in one millisecond must
 * differ.
 */
export function nowTS(now: Date = new Date()): string {
  let ns = BigInt(now.getTime()) * 1_000_000n + (process.hrtime.bigint() % 1_000_000n);
  if (ns <= lastNs) ns = lastNs + 1n;
  lastNs = ns;
  const ms = Number(ns / 1_000_000n);
  const iso = new Date(ms).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const frac = (ns % 1_000_000_000n).toString().padStart(9, "0");
  return iso.slice(0, 19) + "." + frac + "Z";
}

/** "Ed25519-Timestamp <did> <ts> <sig>", the signature over the timestamp text (§13.1). */
export function authHeader(id: Identity, now?: Date): string {
  const ts = nowTS(now);
  return `Ed25519-Timestamp ${id.did} ${ts} ${b64(id.sign(Buffer.from(ts, "utf8")))}`;
}

/** A connect frame carrying both proof shapes (wire.ConnectFrame), asking for store receipts. */
export function connectFrame(id: Identity, now?: Date): Frame {
  const ts = nowTS(now);
  const sig = id.sign(Buffer.from(ts, "utf8"));
  return {
    v: VERSION, type: T.connect, from: id.did, ts,
    auth: { timestamp: ts, signature: b64(sig) },
    public_key: b64std(id.publicKey), timestamp: ts, signature: b64std(sig),
    supported_versions: [VERSION], receipts: true,
  };
}
