// The Double Ratchet (Signal, rev. 4) with the AgentMesh Wire Protocol 1.0
// §8 parameters, as internal/mesh/ratchet implements them: X25519 for the
// DH ratchet; KDF_RK = HKDF-SHA256(salt = root key, IKM = DH output, info
// "AgentMesh_Ratchet_v1", 64 bytes) → root ‖ chain; KDF_CK: message key
// HMAC-SHA256(ck, 0x01), next chain key HMAC-SHA256(ck, 0x02);
// ChaCha20-Poly1305 with a random 12-byte nonce prepended to the
// ciphertext and AAD = AD ‖ header (dh ‖ u32be(pn) ‖ u32be(n)). Decrypt is
// transactional (§3.5): a message that fails leaves the session unchanged.

import { createCipheriv, createDecipheriv, createHmac, diffieHellman, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from "node:crypto";
import { rawPrivate, rawPublic, x25519Private, x25519Public } from "./identity.ts";

/** Randomness: n fresh bytes (injectable so vectors replay exactly). */
export type Rand = (n: number) => Buffer;

/** The system generator. */
export const systemRand: Rand = (n) => randomBytes(n);

/** Skipped message keys kept per session (§8.4, MAX_SKIP). */
export const MAX_SKIP = 100;
const INFO = Buffer.from("AgentMesh_Ratchet_v1");
export const NONCE_SIZE = 12;
const TAG = 16;

/** A ratchet header (Double Ratchet §2.6). */
export interface Header {
  dh: Buffer;
  pn: number;
  n: number;
}

/** One encrypted message. */
export interface Message {
  header: Header;
  ciphertext: Buffer;
}

/** The 40 header bytes the AEAD authenticates. */
export function headerBytes(h: Header): Buffer {
  const b = Buffer.alloc(40);
  h.dh.copy(b, 0, 0, 32);
  b.writeUInt32BE(h.pn, 32);
  b.writeUInt32BE(h.n, 36);
  return b;
}

/** X25519 with a private key drawn as 32 random bytes (ratchet/key.go). */
export function newKey(rand: Rand): KeyObject {
  const b = rand(32);
  try {
    return x25519Private(b);
  } finally {
    b.fill(0);
  }
}

/** X25519(priv, pub), refusing the all-zero output of a low-order point. */
export function dh(priv: KeyObject, pub: Uint8Array): Buffer {
  const out = diffieHellman({ privateKey: priv, publicKey: x25519Public(pub) });
  if (out.every((x) => x === 0)) throw new Error("x25519: DH with a low-order key");
  return out;
}

function kdfRK(rk: Buffer, dhOut: Buffer): [Buffer, Buffer] {
  const okm = Buffer.from(hkdfSync("sha256", dhOut, rk, INFO, 64));
  const out: [Buffer, Buffer] = [Buffer.from(okm.subarray(0, 32)), Buffer.from(okm.subarray(32))];
  okm.fill(0);
  return out;
}

function kdfCK(ck: Buffer): [Buffer, Buffer] {
  return [createHmac("sha256", ck).update(Buffer.of(1)).digest(), createHmac("sha256", ck).update(Buffer.of(2)).digest()];
}

function seal(mk: Buffer, nonce: Buffer, pt: Uint8Array, aad: Buffer): Buffer {
  const c = createCipheriv("chacha20-poly1305", mk, nonce, { authTagLength: TAG });
  c.setAAD(aad, { plaintextLength: pt.length });
  return Buffer.concat([nonce, c.update(pt), c.final(), c.getAuthTag()]);
}

function open(mk: Buffer, ct: Buffer, aad: Buffer): Buffer {
  if (ct.length < NONCE_SIZE + TAG) throw new RatchetError("auth");
  const d = createDecipheriv("chacha20-poly1305", mk, ct.subarray(0, NONCE_SIZE), { authTagLength: TAG });
  d.setAAD(aad, { plaintextLength: ct.length - NONCE_SIZE - TAG });
  d.setAuthTag(ct.subarray(ct.length - TAG));
  try {
    return Buffer.concat([d.update(ct.subarray(NONCE_SIZE, ct.length - TAG)), d.final()]);
  } catch {
    throw new RatchetError("auth");
  }
}

/** Why a message did not decrypt; the session is unchanged. */
export class RatchetError extends Error {
  readonly kind: "auth" | "replay" | "too_many_skipped" | "closed" | "no_send_chain";
  constructor(kind: RatchetError["kind"]) {
    super(`ratchet: ${kind === "auth" ? "message failed authentication" : kind.replaceAll("_", " ")}`);
    this.kind = kind;
  }
}

interface Chains {
  dhs: KeyObject;
  pub: Buffer;
  dhr: Buffer | null;
  rk: Buffer;
  cks: Buffer | null;
  ckr: Buffer | null;
  ns: number;
  nr: number;
  pn: number;
}

/**
 * The persisted form, field for field internal/mesh/ratchet's stateJSON
 * (the toolkit's RatchetState.to_dict names), so a state moves between
 * the implementations.
 */
export interface RatchetState {
  dh_self_private: string;
  dh_self_public: string;
  dh_remote_public: string | null;
  root_key: string;
  chain_key_send: string | null;
  chain_key_recv: string | null;
  send_message_number: number;
  recv_message_number: number;
  previous_send_chain_length: number;
  skipped_keys: Record<string, string>;
}

/** One side of a Double Ratchet conversation. */
export class Ratchet {
  #rand: Rand;
  #c: Chains;
  // "<dh hex>:<n>" → message key, in insertion order (eviction oldest first).
  #skipped = new Map<string, Buffer>();

  private constructor(rand: Rand, c: Chains) {
    this.#rand = rand;
    this.#c = c;
  }

  /** RatchetInitAlice (§3.3): sk the X3DH secret, remote the responder's signed prekey. */
  static initSender(rand: Rand, sk: Buffer, remote: Buffer): Ratchet {
    if (sk.length !== 32) throw new Error(`ratchet: shared secret is ${sk.length} bytes, want 32`);
    const dhs = newKey(rand);
    const out = dh(dhs, remote);
    const [rk, cks] = kdfRK(Buffer.from(sk), out);
    out.fill(0);
    return new Ratchet(rand, { dhs, pub: rawPublic(dhs), dhr: Buffer.from(remote), rk, cks, ckr: null, ns: 0, nr: 0, pn: 0 });
  }

  /** RatchetInitBob (§3.3): spk the signed prekey pair the initiator used. */
  static initReceiver(rand: Rand, sk: Buffer, spk: KeyObject): Ratchet {
    if (sk.length !== 32) throw new Error(`ratchet: shared secret is ${sk.length} bytes, want 32`);
    return new Ratchet(rand, { dhs: spk, pub: rawPublic(spk), dhr: null, rk: Buffer.from(sk), cks: null, ckr: null, ns: 0, nr: 0, pn: 0 });
  }

  /** RatchetEncrypt (§3.4). */
  encrypt(pt: Uint8Array, ad: Buffer): Message {
    const c = this.#c;
    if (!c.cks) throw new RatchetError("no_send_chain");
    const [mk, next] = kdfCK(c.cks);
    c.cks = next;
    const header: Header = { dh: c.pub, pn: c.pn, n: c.ns };
    c.ns++;
    const nonce = this.#rand(NONCE_SIZE);
    const ct = seal(mk, nonce, pt, Buffer.concat([ad, headerBytes(header)]));
    mk.fill(0);
    return { header, ciphertext: ct };
  }

  /** RatchetDecrypt (§3.5); on any error the session is unchanged. */
  decrypt(m: Message, ad: Buffer): Buffer {
    const h = m.header;
    const aad = Buffer.concat([ad, headerBytes(h)]);
    const sk = h.dh.toString("hex") + ":" + h.n;
    const mk0 = this.#skipped.get(sk);
    if (mk0) {
      const pt = open(mk0, m.ciphertext, aad);
      mk0.fill(0);
      this.#skipped.delete(sk);
      return pt;
    }
    const c: Chains = { ...this.#c };
    const fresh: [string, Buffer][] = [];
    const discard = () => fresh.forEach(([, k]) => k.fill(0));
    const skip = (until: number) => {
      if (!c.ckr) return;
      if (until > c.nr && until - c.nr > MAX_SKIP) throw new RatchetError("too_many_skipped");
      while (c.nr < until) {
        const [mk, next] = kdfCK(c.ckr);
        fresh.push([c.dhr!.toString("hex") + ":" + c.nr, mk]);
        c.ckr = next;
        c.nr++;
      }
    };
    try {
      const newChain = !c.dhr || !timingSafeEqual(h.dh, c.dhr);
      if (newChain) {
        skip(h.pn);
        // DHRatchet (§3.5).
        c.pn = c.ns;
        c.ns = 0;
        c.nr = 0;
        c.dhr = Buffer.from(h.dh);
        let out: Buffer;
        try {
          out = dh(c.dhs, h.dh);
        } catch {
          throw new RatchetError("auth");
        }
        [c.rk, c.ckr] = kdfRK(c.rk, out);
        out.fill(0);
        c.dhs = newKey(this.#rand);
        c.pub = rawPublic(c.dhs);
        out = dh(c.dhs, h.dh);
        [c.rk, c.cks] = kdfRK(c.rk, out);
        out.fill(0);
      } else if (h.n < c.nr) {
        throw new RatchetError("replay");
      }
      skip(h.n);
      const [mk, next] = kdfCK(c.ckr!);
      c.ckr = next;
      c.nr++;
      const pt = open(mk, m.ciphertext, aad);
      mk.fill(0);
      this.#c = c;
      for (const [k, v] of fresh) this.#addSkipped(k, v);
      return pt;
    } catch (e) {
      discard();
      throw e;
    }
  }

  #addSkipped(k: string, mk: Buffer): void {
    this.#skipped.delete(k);
    this.#skipped.set(k, mk);
    while (this.#skipped.size > MAX_SKIP) {
      const oldest = this.#skipped.keys().next().value as string;
      this.#skipped.get(oldest)?.fill(0);
      this.#skipped.delete(oldest);
    }
  }

  /** Whether the session has a sending chain. */
  canSend(): boolean {
    return this.#c.cks !== null;
  }

  /** The state, secrets included: store it where only its owner reads it. */
  toJSON(): RatchetState {
    const c = this.#c;
    const hx = (b: Buffer | null) => (b ? b.toString("hex") : null);
    return {
      dh_self_private: rawPrivate(c.dhs).toString("hex"),
      dh_self_public: c.pub.toString("hex"),
      dh_remote_public: hx(c.dhr),
      root_key: c.rk.toString("hex"),
      chain_key_send: hx(c.cks),
      chain_key_recv: hx(c.ckr),
      send_message_number: c.ns,
      recv_message_number: c.nr,
      previous_send_chain_length: c.pn,
      skipped_keys: Object.fromEntries([...this.#skipped].map(([k, v]) => [k, v.toString("hex")])),
    };
  }

  /** Rebuilds a session from toJSON's output (or Go's MarshalJSON). */
  static restore(rand: Rand, j: RatchetState): Ratchet {
    const fixed = (name: string, v: string | null | undefined): Buffer => {
      const b = Buffer.from(v ?? "", "hex");
      if (b.length !== 32 || b.toString("hex") !== (v ?? "").toLowerCase()) throw new Error(`ratchet: state ${name} is not 32 hex-encoded bytes`);
      return b;
    };
    const dhs = x25519Private(fixed("dh_self_private", j.dh_self_private));
    const r = new Ratchet(rand, {
      dhs, pub: rawPublic(dhs),
      dhr: j.dh_remote_public == null ? null : fixed("dh_remote_public", j.dh_remote_public),
      rk: fixed("root_key", j.root_key),
      cks: j.chain_key_send == null ? null : fixed("chain_key_send", j.chain_key_send),
      ckr: j.chain_key_recv == null ? null : fixed("chain_key_recv", j.chain_key_recv),
      ns: j.send_message_number, nr: j.recv_message_number, pn: j.previous_send_chain_length,
    });
    for (const k of Object.keys(j.skipped_keys ?? {}).sort()) {
      const [dhHex, n] = k.split(":");
      fixed("skipped key dh", dhHex);
      if (!/^\d+$/.test(n ?? "")) throw new Error(`ratchet: state skipped key ${JSON.stringify(k)} is not <dh hex>:<n>`);
      r.#addSkipped(k, fixed("skipped message key", j.skipped_keys[k]));
    }
    return r;
  }

  /** Overwrites the secrets; the session is unusable after. */
  zero(): void {
    this.#c.rk.fill(0);
    this.#c.cks?.fill(0);
    this.#c.ckr?.fill(0);
    for (const v of this.#skipped.values()) v.fill(0);
    this.#skipped.clear();
  }
}
