// The registry and relay clients (internal/mesh/client): registration
// with proof of possession, bundle and key lookups with the
// Ed25519-Timestamp header (§13.1), pairing redemption
// (internal/pairing.Redemption), and one relay WebSocket that asks for
// store receipts (the kars extension) so a send returns only once the
// relay holds the frame durably. Frames move here; sessions are the
// caller's.

import { createHash } from "node:crypto";
import { b64, unb64 } from "./b64.ts";
import { type Identity, checkDID } from "./identity.ts";
import { T, VERSION, type Frame, authHeader, connectFrame, nowTS, parseFrame } from "./wire.ts";
import { type Bundle, parseBundle, verifyBundle } from "./x3dh.ts";

/** A registry answer other than success, with its detail. */
export class RegistryError extends Error {
  readonly status: number;
  readonly detail: string;
  constructor(op: string, status: number, detail: string) {
    super(`mesh registry: ${op}: ${status} ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** What a redemption binds (internal/pairing.Result). */
export interface PairingResult {
  pairing: string;
  name: string;
  sandbox?: string;
  issuer?: string;
  registry: string;
  relay: string;
  expiresAt: string;
  capabilities: string[];
}

/** The redemption path on a kars-mesh registry (pairing.RedeemPath). */
export const REDEEM_PATH = "/v1/pairings/redeem";

/** "sha256:" + hex SHA-256 of the token, as KarsPairing spec.tokenHash stores it. */
export function tokenHash(token: string): string {
  return "sha256:" + createHash("sha256").update(token, "utf8").digest("hex");
}

/** The signed redemption body (pairing.NewRedemption). */
export function redemption(token: string, id: Identity, now?: Date) {
  const ts = nowTS(now);
  const msg = Buffer.from(`kars-pair-redeem-v1\n${tokenHash(token)}\n${id.did}\n${ts}`, "utf8");
  return { token, did: id.did, public_key: b64(id.publicKey), timestamp: ts, signature: b64(id.sign(msg)) };
}

/** A registry client for one identity. */
export class Registry {
  readonly base: string;
  readonly id: Identity;
  readonly timeoutMs: number;

  constructor(base: string, id: Identity, timeoutMs = 20_000) {
    this.base = base.replace(/\/+$/, "");
    this.id = id;
    this.timeoutMs = timeoutMs;
  }

  async #do(op: string, method: string, path: string, body: unknown, auth: boolean): Promise<unknown> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (auth) headers.authorization = authHeader(this.id);
    let resp: Response;
    try {
      resp = await fetch(this.base + path, { method, headers, body: body === undefined ? null : JSON.stringify(body), signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (e) {
      throw new Error(`mesh registry at ${this.base}: ${op}: ${(e as Error).cause ?? (e as Error).message}`);
    }
    const raw = await resp.text();
    if (raw.length > 1 << 20) throw new Error(`mesh registry: ${op}: answer too large`);
    let j: unknown = undefined;
    try {
      j = raw === "" ? undefined : JSON.parse(raw);
    } catch {
      /* a non-JSON body: keep the status */
    }
    if (!resp.ok) {
      const d = (j as { detail?: unknown } | undefined)?.detail;
      throw new RegistryError(op, resp.status, typeof d === "string" ? d : d === undefined ? resp.statusText : JSON.stringify(d));
    }
    return j;
  }

  /** Registers the identity (proof = Ed25519 over public key ‖ timestamp); already registered is fine. */
  async register(capabilities: string[], metadata: Record<string, string>): Promise<void> {
    const pub = b64(this.id.publicKey);
    // The toolkit's registry reads proof_timestamp with fromisoformat:
    // microseconds and a numeric offset.
    const ts = new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000+00:00");
    const body = { public_key: pub, proof: b64(this.id.sign(Buffer.from(pub + ts, "utf8"))), proof_timestamp: ts, capabilities, metadata };
    try {
      const out = (await this.#do("register", "POST", "/v1/agents", body, false)) as { did?: string } | undefined;
      if (out?.did && out.did !== this.id.did) throw new Error(`mesh registry: registered as ${out.did}, want ${this.id.did}`);
    } catch (e) {
      if (e instanceof RegistryError && e.status === 409) return;
      throw e;
    }
  }

  /** Fetches did's prekey bundle (consuming one of its one-time prekeys) and verifies it. */
  async bundle(did: string): Promise<Bundle> {
    const raw = await this.#do("fetch bundle", "GET", `/v1/agents/${encodeURIComponent(did)}/prekeys`, undefined, true);
    const b = parseBundle(raw);
    checkDID(did, b.identityKeyEd);
    verifyBundle(b);
    return b;
  }

  /** did's Ed25519 key as the registry holds it, checked against the DID. */
  async publicKey(did: string): Promise<Buffer> {
    const out = (await this.#do("get agent", "GET", `/v1/agents/${encodeURIComponent(did)}`, undefined, false)) as { public_key?: string } | undefined;
    let k: Buffer;
    try {
      k = unb64(out?.public_key ?? "");
    } catch {
      throw new Error(`mesh registry: ${did} has no usable public_key`);
    }
    checkDID(did, k);
    return k;
  }

  /** Redeems a pairing token with this identity. */
  async redeem(token: string): Promise<PairingResult> {
    return (await this.#do("redeem", "POST", REDEEM_PATH, redemption(token, this.id), false)) as PairingResult;
  }
}

/** A frame the relay delivered: parsed, with its raw text for signature checks. */
export interface Inbound {
  frame: Frame | null;
  raw: string;
  error?: string;
}

/**
 * One relay connection (§12): the connect proof first, then frames. A
 * send resolves when the relay reports the frame stored (or refuses it);
 * delivered frames go to the handler, which must ack each once its effect
 * is durable, or the relay delivers it again next time.
 */
export class Relay {
  readonly #ws: WebSocket;
  readonly #did: string;
  readonly #pending = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  #closed: Error | null = null;
  #onClose: ((e: Error) => void)[] = [];

  private constructor(ws: WebSocket, did: string) {
    this.#ws = ws;
    this.#did = did;
  }

  /** Connects as id and hands every delivered frame to onFrame, in order. */
  static async connect(url: string, id: Identity, onFrame: (in_: Inbound) => void, timeoutMs = 15_000): Promise<Relay> {
    const ws = new WebSocket(url);
    const r = new Relay(ws, id.did);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        ws.close();
        reject(new Error(`mesh relay ${url}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(t);
        resolve();
      };
      ws.onerror = () => {
        clearTimeout(t);
        reject(new Error(`mesh relay ${url}: connection failed`));
      };
    });
    ws.onerror = null;
    ws.onclose = (ev) => r.#fail(new Error(`mesh relay closed the connection (${ev.code}${ev.reason ? ": " + ev.reason : ""})`));
    ws.onmessage = (ev) => {
      const raw = typeof ev.data === "string" ? ev.data : Buffer.from(ev.data as ArrayBuffer).toString("utf8");
      let f: Frame;
      try {
        f = parseFrame(raw);
      } catch (e) {
        onFrame({ frame: null, raw, error: (e as Error).message });
        return;
      }
      if (f.type === T.ack) {
        if (f.status === "stored" && f.id) r.#settle(f.id, null);
        return;
      }
      if (f.type === T.error) {
        if (f.id) r.#settle(f.id, new Error(`mesh relay refused ${f.id}: ${f.detail ?? "no detail"}`));
        else r.#fail(new Error(`mesh relay: ${f.detail ?? "error"}`));
        return;
      }
      onFrame({ frame: f, raw });
    };
    ws.send(JSON.stringify(connectFrame(id)));
    return r;
  }

  #settle(id: string, err: Error | null): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    if (err) p.reject(err);
    else p.resolve();
  }

  #fail(e: Error): void {
    if (this.#closed) return;
    this.#closed = e;
    for (const [, p] of this.#pending) p.reject(e);
    this.#pending.clear();
    for (const f of this.#onClose) f(e);
  }

  /** Calls f when the connection ends. */
  onClose(f: (e: Error) => void): void {
    this.#onClose.push(f);
  }

  /** Why the connection ended, or null while it is up. */
  get closed(): Error | null {
    return this.#closed;
  }

  /** Sends f and resolves once the relay reports it stored. */
  send(f: Frame, timeoutMs = 20_000): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closed);
    if (!f.id) return Promise.reject(new Error("mesh relay: frame needs an id"));
    const id = f.id;
    return new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => this.#settle(id, new Error(`mesh relay did not confirm ${id} within ${timeoutMs} ms`)), timeoutMs);
      this.#pending.set(id, {
        resolve: () => (clearTimeout(t), resolve()),
        reject: (e) => (clearTimeout(t), reject(e)),
      });
      this.#ws.send(JSON.stringify(f));
    });
  }

  /** Tells the relay to delete a delivered frame. */
  ack(id: string): void {
    if (!this.#closed) this.#ws.send(JSON.stringify({ v: VERSION, type: T.ack, id }));
  }

  /** Sends disconnect and closes. */
  close(): void {
    if (!this.#closed) {
      try {
        this.#ws.send(JSON.stringify({ v: VERSION, type: T.disconnect, from: this.#did }));
      } catch {
        /* closing anyway */
      }
      this.#fail(new Error("closed"));
    }
    this.#ws.close(1000, "bye");
  }
}
