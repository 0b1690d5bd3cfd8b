// The offload host: what the plugin's tools do (internal/offload/host is
// the Go counterpart the cluster's tests drive). It pairs once with a
// token, redeemed with a mesh identity of its own; then, per tool call,
// it connects to the cluster's relay, KNOCKs, runs X3DH and the Double
// Ratchet with the offload broker, speaks the offload protocol, sends the
// task text straight to the offload sandbox's router once it is ready and
// files the agent's answer. Every send and receive is on the host's own
// audit log; the ratchet state is written before a sealed frame leaves and
// before an inbound frame is acknowledged.

import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { unb64 } from "./b64.ts";
import { Identity } from "./identity.ts";
import { type Inbound, type PairingResult, Registry, RegistryError, Relay } from "./mesh.ts";
import {
  type BrokerMessage, type Info, type ProtocolError, type Request, type TaskDescriptor,
  PROTOCOL_VERSION, checkDescriptor, declare, parseBrokerMessage, taskText, validOffloadID,
} from "./offload.ts";
import { type Rand, systemRand } from "./ratchet.ts";
import { Session, type SessionState } from "./session.ts";
import { AuditLog, type AuditRecord, ensureDir, lock, readJSON, writeAtomic } from "./store.ts";
import { T, VERSION, type Frame, nowTS, signFrame, verifyFrame } from "./wire.ts";

/** The host's name for the cluster's offload broker. */
export const BROKER = "kars";

/** A refusal by the cluster, with the broker's stable code and its explanation. */
export class Refused extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** Options of a host. */
export interface HostOptions {
  /** Registry and relay override the token's (a port-forwarded mesh edge). */
  registry?: string;
  relay?: string;
  /** How long to wait for the broker's answer to one request (30 s). */
  answerTimeoutMs?: number;
  /** How long to wait for a KNOCK's answer (15 s). */
  knockTimeoutMs?: number;
  rand?: Rand;
}

interface PeerSession {
  state: SessionState;
  expires: string;
  ids: string[];
}

/** What the host remembers of one offload. */
export interface OffloadRecord {
  info: Info;
  title: string;
  /** The task text, kept on the host (0600) until the sandbox is ready for it. */
  text: string;
  sentAt?: string;
  result?: { id: string; text: string; receivedAt: string };
  acknowledged?: boolean;
}

interface State {
  pairing: PairingResult & { pairedAt: string };
  sessions: Record<string, PeerSession>;
  offloads: Record<string, OffloadRecord>;
  events: BrokerMessage[];
  revoked?: ProtocolError;
}

const STATE = "state.json";
const SEED = "identity.seed";

/** Decodes a token's payload without its signature (pairing.Parse): where to redeem and what it grants. */
export function parseToken(token: string): {
  name: string; issuer?: string; sandbox?: string; registry: string; relay: string; slots: number; exp: number; capabilities: string[]; token_budget?: number;
} {
  const t = token.trim();
  if (t.length > 4096 || !t.startsWith("azc_pair_v1_")) throw new Error("this is not a kars pairing token (it does not start with azc_pair_v1_)");
  const [body, sig, extra] = t.slice(12).split(".");
  if (!body || !sig || extra !== undefined) throw new Error("malformed kars pairing token: no signature");
  let p: Record<string, unknown>;
  try {
    if (unb64(sig).length !== 64) throw new Error("signature");
    p = JSON.parse(unb64(body).toString("utf8")) as Record<string, unknown>;
  } catch {
    throw new Error("malformed kars pairing token: bad base64url or JSON");
  }
  if (p.v !== 1 || typeof p.name !== "string" || typeof p.registry !== "string" || typeof p.relay !== "string" || typeof p.exp !== "number" || !Array.isArray(p.capabilities)) {
    throw new Error("malformed kars pairing token: missing fields");
  }
  return p as ReturnType<typeof parseToken>;
}

/** A paired (or pairing) offload host kept in one state folder. */
export class Host {
  readonly dir: string;
  readonly id: Identity;
  readonly audit: AuditLog;
  readonly #o: Required<Omit<HostOptions, "registry" | "relay">> & Pick<HostOptions, "registry" | "relay">;
  #st: State | undefined;
  #relay: Relay | null = null;
  #registry: Registry | null = null;
  #queue: Promise<void> = Promise.resolve();
  #knocks = new Map<string, { did: string; done: (accepted: boolean, reason: string, ttl: number) => void }>();
  #replies = new Map<string, (text: string) => void>();
  #changed: (() => void)[] = [];
  #keys = new Map<string, Buffer>();

  private constructor(dir: string, id: Identity, o: HostOptions) {
    this.dir = dir;
    this.id = id;
    this.audit = new AuditLog(dir);
    this.#o = { answerTimeoutMs: 30_000, knockTimeoutMs: 15_000, rand: systemRand, ...o };
    this.#st = readJSON<State>(join(dir, STATE));
  }

  /** Opens the host in dir, creating its identity the first time. */
  static open(dir: string, o: HostOptions = {}): Host {
    ensureDir(dir);
    const seedPath = join(dir, SEED);
    let id: Identity;
    if (existsSync(seedPath)) {
      const seed = readFileSync(seedPath);
      id = Identity.fromSeed(seed);
      seed.fill(0);
    } else {
      id = Identity.generate();
      const seed = id.seed();
      writeAtomic(seedPath, seed);
      seed.fill(0);
    }
    return new Host(dir, id, o);
  }

  /** The pairing, or undefined before kars_pair. */
  get pairing(): State["pairing"] | undefined {
    return this.#st?.pairing;
  }

  /** The offloads this host knows. */
  get offloads(): Record<string, OffloadRecord> {
    return this.#st?.offloads ?? {};
  }

  /** The broker's revocation notice, once one arrived. */
  get revoked(): ProtocolError | undefined {
    return this.#st?.revoked;
  }

  #save(): void {
    if (this.#st) writeAtomic(join(this.dir, STATE), JSON.stringify(this.#st));
  }

  #record(rec: AuditRecord): void {
    this.audit.append(rec);
  }

  /**
   * Redeems token with this host's identity. The token is single-use: the
   * cluster binds its pairing to this identity, and the host never writes
   * the token anywhere; the caller drops its copy.
   */
  async pair(token: string): Promise<State["pairing"]> {
    if (this.#st?.pairing) throw new Error(`this host is already paired (pairing ${this.#st.pairing.name}); a second token is not needed`);
    const p = parseToken(token);
    if (!p.capabilities.includes("offload") && !p.capabilities.includes("handoff")) throw new Error("the token grants neither offload nor handoff");
    if (!p.issuer) throw new Error("the token names no issuer: it pairs with a sandbox, not with the cluster's offload broker (ask for `kars pair generate` without --sandbox)");
    if (p.exp * 1000 <= Date.now()) {
      const rec = { action: "offload:pair:" + p.name, decision: "deny" as const, reason: `the pairing token expired at ${new Date(p.exp * 1000).toISOString()}` };
      this.#record(rec);
      throw new Refused("pairing_expired", rec.reason + "; ask the operator for a new one (kars pair generate)");
    }
    const registry = this.#o.registry ?? p.registry;
    const relay = this.#o.relay ?? p.relay;
    let res: PairingResult;
    try {
      res = await new Registry(registry, this.id).redeem(token);
    } catch (e) {
      const detail = e instanceof RegistryError ? e.detail : (e as Error).message;
      this.#record({ action: "offload:pair:" + p.name, decision: "deny", reason: "the cluster refused the token: " + detail });
      const code = /already redeemed/.test(detail) ? "token_used" : /expired/.test(detail) ? "pairing_expired" : /revoked/.test(detail) ? "pairing_revoked" : /no pairing holds/.test(detail) ? "token_unknown" : "redeem_failed";
      const why: Record<string, string> = {
        token_used: "this pairing token was already used (tokens are single-use); ask the operator for a new one",
        pairing_expired: "the pairing token expired; ask the operator for a new one",
        pairing_revoked: "the operator revoked this pairing",
        token_unknown: "the cluster holds no pairing for this token (never issued, or deleted)",
      };
      throw new Refused(code, `${why[code] ?? "the cluster refused the pairing token"} (${detail})`);
    }
    this.#st = {
      pairing: { ...res, issuer: res.issuer || p.issuer, registry, relay, pairedAt: new Date().toISOString() },
      sessions: {}, offloads: {}, events: [],
    };
    this.#save();
    this.#record({ action: "offload:pair:" + res.name, decision: "allow", reason: `the pairing token was redeemed with this host's identity ${this.id.did}`,
      attrs: { pairing: res.pairing, broker_did: this.#st.pairing.issuer ?? "", expires_at: res.expiresAt } });
    return this.#st.pairing;
  }

  #paired(): State {
    if (!this.#st?.pairing) throw new Error("not paired yet: call kars_pair with the token the operator gave you");
    return this.#st;
  }

  /** Runs fn with a live relay connection, one at a time per state folder. */
  async connected<R>(fn: () => Promise<R>): Promise<R> {
    const st = this.#paired();
    const unlock = await lock(this.dir);
    try {
      this.#st = readJSON<State>(join(this.dir, STATE)) ?? st;
      this.#registry = new Registry(this.#st.pairing.registry, this.id);
      await this.#registry.register(["kars-offload-host"], { kind: "openclaw-kars-mesh" });
      this.#relay = await Relay.connect(this.#st.pairing.relay, this.id, (in_) => this.#enqueue(in_));
      return await fn();
    } finally {
      this.#relay?.close();
      this.#relay = null;
      await this.#queue;
      this.#save();
      unlock();
    }
  }

  #enqueue(in_: Inbound): void {
    this.#queue = this.#queue.then(() => this.#onFrame(in_)).catch((e) => {
      this.#record({ action: "mesh:receive:unknown", decision: "deny", reason: "security_event: handling a frame failed: " + (e as Error).message });
    });
  }

  #notify(): void {
    const fs = this.#changed;
    this.#changed = [];
    fs.forEach((f) => f());
  }

  /** Waits until check returns a value (re-checked after every inbound frame) or timeoutMs passes. */
  async #waitFor<R>(check: () => R | undefined, timeoutMs: number): Promise<R | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      const left = deadline - Date.now();
      if (left <= 0 || this.#relay?.closed) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.#changed.push(() => (clearTimeout(t), resolve()));
      });
    }
  }

  #peerName(did: string): string {
    const st = this.#st!;
    if (did === st.pairing.issuer) return BROKER;
    for (const [id, o] of Object.entries(st.offloads)) if (o.info.did === did) return "offload-" + id;
    return "unpaired";
  }

  async #peerKey(did: string): Promise<Buffer> {
    let k = this.#keys.get(did);
    if (!k) {
      k = await this.#registry!.publicKey(did);
      this.#keys.set(did, k);
    }
    return k;
  }

  async #onFrame(in_: Inbound): Promise<void> {
    const relay = this.#relay;
    const f = in_.frame;
    if (!f) {
      this.#record({ action: "mesh:receive:unpaired", decision: "deny", reason: "security_event: malformed: " + (in_.error ?? "") });
      return;
    }
    if (f.to !== this.id.did) {
      if (f.id) relay?.ack(f.id);
      return;
    }
    const name = this.#peerName(f.from ?? "");
    switch (f.type) {
      case T.knockAccept:
      case T.knockReject: {
        const w = this.#knocks.get(f.knock_id ?? "");
        if (w && w.did === f.from) {
          if (verifyFrame(in_.raw, await this.#peerKey(w.did))) {
            w.done(f.type === T.knockAccept, f.reason ?? "", f.conditions?.ttl_seconds ?? 0);
          } else {
            this.#record({ action: "mesh:receive:" + name, decision: "deny", reason: "security_event: bad_signature: a KNOCK answer whose signature does not verify", attrs: { peer_did: f.from ?? "" } });
          }
        }
        break;
      }
      case T.knock: {
        // This host opens its sessions itself; it grants none.
        this.#record({ action: "mesh:receive:" + name, decision: "deny", reason: "an inbound KNOCK: this host accepts no sessions it did not open", attrs: { peer_did: f.from ?? "", op: "mesh_knock" } });
        const a: Frame = { v: VERSION, type: T.knockReject, from: this.id.did, to: f.from!, id: newID("k_"), ts: nowTS(), knock_id: f.id!, reason: "this OpenClaw host opens its sessions itself" };
        signFrame(a, this.id);
        relay?.send(a).catch(() => {});
        break;
      }
      case T.message:
        this.#onMessage(f, name);
        break;
    }
    if (f.id) relay?.ack(f.id);
    this.#notify();
  }

  #onMessage(f: Frame, name: string): void {
    const st = this.#st!;
    const ps = st.sessions[f.from!];
    const attrs = { peer_did: f.from!, id: f.id!, op: "mesh_receive" };
    if (!ps) {
      this.#record({ action: "mesh:receive:" + name, decision: "deny", reason: "security_event: no_session: a message outside any session cannot be decrypted", attrs });
      return;
    }
    if (ps.ids.includes(f.id!)) return; // a redelivery of a frame already opened
    const s = Session.restore(this.#o.rand, ps.state);
    let pt: Buffer;
    try {
      pt = s.open(f);
    } catch (e) {
      this.#record({ action: "mesh:receive:" + name, decision: "deny", reason: "security_event: decrypt: " + (e as Error).message, attrs });
      return;
    }
    ps.state = s.toJSON();
    ps.ids = [...ps.ids, f.id!].slice(-64);
    const env = openEnvelope(pt);
    pt.fill(0);
    this.#record({ action: "mesh:receive:" + name, decision: "allow", reason: "a message from the paired " + (name === BROKER ? "cluster broker" : "offload sandbox"),
      payload_sha256: sha256(env.text), attrs: env.in_reply_to ? { ...attrs, in_reply_to: env.in_reply_to } : attrs });
    if (name === BROKER) {
      const wait = env.in_reply_to ? this.#replies.get(env.in_reply_to) : undefined;
      if (wait) {
        this.#replies.delete(env.in_reply_to!);
        wait(env.text);
      } else {
        try {
          const m = parseBrokerMessage(env.text);
          if (m.op === "event") this.#onEvent(m);
        } catch {
          /* not a protocol message: on record above, nothing to do */
        }
      }
    } else if (name.startsWith("offload-")) {
      const o = st.offloads[name.slice(8)];
      // The agent may answer in more than one message: keep them all, in order.
      if (o) o.result = o.result ? { ...o.result, text: o.result.text + "\n\n" + env.text } : { id: f.id!, text: env.text, receivedAt: new Date().toISOString() };
    }
    this.#save();
  }

  #onEvent(m: BrokerMessage): void {
    const st = this.#st!;
    st.events = [...st.events, m].slice(-100);
    if (m.event === "revoked" && m.error) st.revoked = m.error;
    const info = m.offload;
    if (info && st.offloads[info.id]) {
      const o = st.offloads[info.id]!;
      o.info = { ...o.info, ...info };
      if (m.event === "ended") o.info.phase = "Ending";
    }
  }

  /** Makes sure a live session with did exists: KNOCK first, then X3DH against its bundle. */
  async #ensureSession(did: string, name: string, capabilities: string[]): Promise<void> {
    const st = this.#st!;
    const ps = st.sessions[did];
    if (ps && Date.parse(ps.expires) > Date.now()) return;
    const knockID = newID("k_");
    const f: Frame = {
      v: VERSION, type: T.knock, from: this.id.did, to: did, id: knockID, ts: nowTS(),
      intent: { action: "mesh:session", description: `OpenClaw host ${this.id.did} asks for a session`, capabilities_required: capabilities },
    };
    signFrame(f, this.id);
    const answer = new Promise<{ accepted: boolean; reason: string; ttl: number }>((resolve) => {
      this.#knocks.set(knockID, { did, done: (accepted, reason, ttl) => resolve({ accepted, reason, ttl }) });
    });
    try {
      await this.#relay!.send(f);
      const a = await Promise.race([answer, sleep(this.#o.knockTimeoutMs).then(() => null)]);
      if (!a) throw new Refused("knock_timeout", `${name} did not answer the KNOCK within ${this.#o.knockTimeoutMs / 1000} s`);
      if (!a.accepted) throw new Refused(knockCode(a.reason), `${name} refused the session: ${a.reason}`);
      const bundle = await this.#registry!.bundle(did);
      const s = Session.initiate(this.#o.rand, this.id, did, bundle);
      const ttl = Math.min(a.ttl > 0 ? a.ttl : 86400, 86400);
      st.sessions[did] = { state: s.toJSON(), expires: new Date(Date.now() + ttl * 1000).toISOString(), ids: [] };
      this.#save();
    } finally {
      this.#knocks.delete(knockID);
    }
  }

  /** Seals text for did and sends it; the advanced ratchet is on disk before the frame leaves. */
  async #send(did: string, name: string, text: string, id = newID("m_")): Promise<string> {
    const st = this.#st!;
    const ps = st.sessions[did]!;
    const s = Session.restore(this.#o.rand, ps.state);
    const f = s.seal(Buffer.from(JSON.stringify({ text }), "utf8"), id);
    ps.state = s.toJSON();
    this.#save();
    this.#record({ action: "mesh:send:" + name, decision: "allow", reason: "the host's user offloads to the paired cluster", payload_sha256: sha256(text), attrs: { peer_did: did, id, op: "mesh_send" } });
    await this.#relay!.send(f);
    return id;
  }

  /** Sends one request to the broker and returns its answer; a refusal throws Refused. */
  async #call(req: Omit<Request, "v" | "id"> & { id?: string }): Promise<BrokerMessage> {
    const st = this.#st!;
    if (st.revoked) throw new Refused(st.revoked.code, st.revoked.message);
    const broker = st.pairing.issuer!;
    const full: Request = { v: PROTOCOL_VERSION, id: req.id ?? newID("r"), ...req } as Request;
    // Right after pairing the broker may not have seen the redemption:
    // its KNOCK answer says "not paired" for a few seconds.
    const until = Date.parse(st.pairing.pairedAt) + 90_000;
    for (;;) {
      try {
        await this.#ensureSession(broker, BROKER, st.pairing.capabilities);
        break;
      } catch (e) {
        if (!(e instanceof Refused) || !/not paired|knock_timeout/.test(e.code + e.message) || Date.now() > until) throw this.#revokedOr(e);
        await sleep(1000);
      }
    }
    let answer: string | undefined;
    const id = newID("m_");
    this.#replies.set(id, (t) => (answer = t));
    try {
      await this.#send(broker, BROKER, JSON.stringify(full), id);
    } catch (e) {
      this.#replies.delete(id);
      throw this.#revokedOr(e);
    }
    // A revoked pairing gets no answer: the broker's revocation notice
    // (delivered when the host connects, or while it waits) says why.
    const got = await this.#waitFor(() => answer ?? (st.revoked ? "" : undefined), this.#o.answerTimeoutMs);
    this.#replies.delete(id);
    if (!got) {
      if (!st.revoked) {
        // A broker that lost its half of the session cannot decrypt this
        // one: drop ours, so the next call KNOCKs and runs X3DH afresh.
        delete st.sessions[broker];
        this.#save();
      }
      throw this.#revokedOr(new Error(`the kars broker did not answer ${full.op} within ${this.#o.answerTimeoutMs / 1000} s; the session with it was reset, try again`));
    }
    const m = parseBrokerMessage(got);
    if (m.re !== full.id) throw new Error(`the broker answered ${m.re}, not ${full.id}`);
    if (!m.ok) {
      const err = m.error ?? { code: "unavailable", message: "the broker refused without a reason" };
      this.#record({ action: "offload:" + full.op, decision: "deny", reason: `${err.code}: ${err.message}`, attrs: { request: full.id } });
      throw new Refused(err.code, err.message);
    }
    return m;
  }

  #revokedOr(e: unknown): Error {
    const r = this.#st?.revoked;
    return r ? new Refused(r.code, r.message) : (e as Error);
  }

  /**
   * Asks for an offload sandbox for the task, then drives it for up to
   * waitMs: sends the task once the sandbox is ready and waits for the
   * answer. Only taskText(t) leaves the host (to the sandbox; the broker
   * sees its title, SHA-256 and size).
   */
  async offload(t: TaskDescriptor, waitMs = 120_000, acknowledge = true): Promise<OffloadRecord> {
    checkDescriptor(t);
    const text = taskText(t);
    return this.connected(async () => {
      const req: Omit<Request, "v" | "id"> = { op: "offload", task: declare(t.title, text) };
      if (t.limits) req.limits = t.limits;
      const m = await this.#call(req);
      if (!m.offload) throw new Error("the broker admitted the offload but named none");
      const st = this.#st!;
      st.offloads[m.offload.id] = { info: m.offload, title: t.title, text };
      this.#save();
      this.#record({ action: "offload:offload", decision: "allow", reason: "the cluster admitted the offload", payload_sha256: sha256(text), attrs: { offload: m.offload.id, sandbox: m.offload.sandbox } });
      await this.#drive(m.offload.id, Date.now() + waitMs);
      const o = st.offloads[m.offload.id]!;
      if (o.result && acknowledge) await this.#ack(o);
      return o;
    });
  }

  /** Acknowledges an answered offload: the cluster ends it and deletes its sandbox. */
  async #ack(o: OffloadRecord): Promise<void> {
    const m = await this.#call({ op: "ack", offload: o.info.id });
    if (m.offload) o.info = { ...o.info, ...m.offload };
    o.acknowledged = true;
    o.text = ""; // nothing left to send: drop the local copy of the task
    this.#save();
  }

  /** Advances offload id until deadline: waits for Ready, sends the task, waits for the answer. */
  async #drive(id: string, deadline: number): Promise<void> {
    const st = this.#st!;
    const o = st.offloads[id]!;
    let nextStatus = Date.now() + 5000;
    while (!o.result && Date.now() < deadline && o.info.phase !== "Ending") {
      if (o.info.phase === "Ready" && o.info.did && !o.sentAt) {
        if (o.info.task_sha256 && o.info.task_sha256 !== sha256(o.text)) throw new Error("the offload was admitted for another task (SHA-256 differs)");
        await this.#ensureSession(o.info.did, "offload-" + id, []);
        await this.#send(o.info.did, "offload-" + id, o.text);
        o.sentAt = new Date().toISOString();
        this.#save();
        continue;
      }
      if (Date.now() >= nextStatus && o.info.phase === "Creating") {
        const m = await this.#call({ op: "status", offload: id });
        if (m.offload) o.info = { ...o.info, ...m.offload };
        nextStatus = Date.now() + 5000;
        continue;
      }
      await this.#waitFor(() => (o.result || o.info.phase !== "Creating" ? true : undefined), Math.min(deadline, nextStatus) - Date.now());
      if (this.#relay?.closed) throw new Error("the mesh relay connection dropped: " + this.#relay.closed.message);
      if (o.sentAt && !o.result) await this.#waitFor(() => o.result, deadline - Date.now());
    }
  }

  /** The status of one offload (id) or of the pairing; a ready offload's task is sent on the way. */
  async status(id?: string): Promise<BrokerMessage & { local?: OffloadRecord }> {
    if (id !== undefined && !validOffloadID(id)) throw new Error(`${JSON.stringify(id)} is not an offload id (8 hex digits)`);
    return this.connected(async () => {
      const req: Omit<Request, "v" | "id"> = { op: "status" };
      if (id) req.offload = id;
      const m = await this.#call(req);
      const st = this.#st!;
      if (id && m.offload && st.offloads[id]) {
        st.offloads[id]!.info = { ...st.offloads[id]!.info, ...m.offload };
        await this.#drive(id, Date.now() + 2000);
      }
      return id ? { ...m, local: st.offloads[id] } : m;
    });
  }

  /**
   * The agent's answer for offload id, waiting up to waitMs for it; with
   * acknowledge, the cluster then ends the offload (its sandbox is deleted
   * and what it used is charged).
   */
  async result(id: string, waitMs = 60_000, acknowledge = true): Promise<OffloadRecord> {
    if (!validOffloadID(id)) throw new Error(`${JSON.stringify(id)} is not an offload id (8 hex digits)`);
    return this.connected(async () => {
      const st = this.#st!;
      const o = st.offloads[id];
      if (!o) throw new Error(`this host never offloaded ${id}`);
      if (!o.result) {
        const m = await this.#call({ op: "status", offload: id });
        if (m.offload) o.info = { ...o.info, ...m.offload };
        await this.#drive(id, Date.now() + waitMs);
      }
      if (o.result && acknowledge && !o.acknowledged) await this.#ack(o);
      return o;
    });
  }

  /** Takes a running offload back with its state summary (capability handoff). */
  async handoff(id: string): Promise<BrokerMessage> {
    if (!validOffloadID(id)) throw new Error(`${JSON.stringify(id)} is not an offload id (8 hex digits)`);
    return this.connected(async () => {
      const m = await this.#call({ op: "handoff", offload: id });
      const o = this.#st!.offloads[id];
      if (o) {
        if (m.offload) o.info = { ...o.info, ...m.offload };
        o.info.phase = "Ending";
        o.text = ""; // taken back: nothing left to send
        this.#save();
      }
      return m;
    });
  }
}

function knockCode(reason: string): string {
  if (/revoked/i.test(reason)) return "pairing_revoked";
  if (/expired/i.test(reason)) return "pairing_expired";
  if (/not paired/i.test(reason)) return "not_paired";
  return "knock_rejected";
}

/** The plaintext inside a ratchet message (bridge.envelope): {"text", "in_reply_to"}, or raw text. */
export function openEnvelope(pt: Buffer): { text: string; in_reply_to?: string } {
  try {
    const e = JSON.parse(pt.toString("utf8")) as { text?: unknown; in_reply_to?: unknown };
    if (e && typeof e.text === "string" && e.text !== "") {
      return typeof e.in_reply_to === "string" && e.in_reply_to ? { text: e.text, in_reply_to: e.in_reply_to } : { text: e.text };
    }
  } catch {
    /* raw text */
  }
  return { text: pt.toString("utf8") };
}

const sha256 = (s: string): string => createHash("sha256").update(s, "utf8").digest("hex");
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const newID = (prefix: string): string => prefix + randomBytes(12).toString("hex");
