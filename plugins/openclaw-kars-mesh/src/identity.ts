// An AgentMesh identity (internal/mesh/identity): an Ed25519 key, the
// X25519 key derived from it for X3DH (Wire Protocol 1.0 §4.4), and the
// did:mesh: DID that names it. node:crypto does the curve arithmetic; the
// one map it lacks, Ed25519 public key → X25519 public key (RFC 7748
// §4.1), is done here with BigInt over GF(2^255-19). Those inputs are
// public, so the non-constant-time arithmetic leaks nothing secret.

import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from "node:crypto";

// DER prefixes of RFC 8410 keys: PKCS #8 private and SPKI public, for
// Ed25519 (OID 1.3.101.112) and X25519 (1.3.101.110).
const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");
const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");
const SPKI_X25519 = Buffer.from("302a300506032b656e032100", "hex");

/** Ed25519 private key object from a 32-byte seed. */
export function ed25519Private(seed: Uint8Array): KeyObject {
  if (seed.length !== 32) throw new Error(`identity: seed is ${seed.length} bytes, want 32`);
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, seed]), format: "der", type: "pkcs8" });
}

/** Ed25519 public key object from its 32 bytes. */
export function ed25519Public(pub: Uint8Array): KeyObject {
  if (pub.length !== 32) throw new Error(`identity: Ed25519 key is ${pub.length} bytes, want 32`);
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519, pub]), format: "der", type: "spki" });
}

/** X25519 private key object from a 32-byte scalar. */
export function x25519Private(scalar: Uint8Array): KeyObject {
  if (scalar.length !== 32) throw new Error(`x25519: private key is ${scalar.length} bytes, want 32`);
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519, scalar]), format: "der", type: "pkcs8" });
}

/** X25519 public key object from its 32 bytes. */
export function x25519Public(pub: Uint8Array): KeyObject {
  if (pub.length !== 32) throw new Error(`x25519: public key is ${pub.length} bytes, want 32`);
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, pub]), format: "der", type: "spki" });
}

/** The raw 32 bytes of a public key object (or of a private key's public half). */
export function rawPublic(k: KeyObject): Buffer {
  const pub = k.type === "private" ? createPublicKey(k) : k;
  const der = pub.export({ format: "der", type: "spki" });
  return Buffer.from(der.subarray(der.length - 32));
}

/** The raw 32 bytes of an X25519 or Ed25519 private key object. */
export function rawPrivate(k: KeyObject): Buffer {
  const der = k.export({ format: "der", type: "pkcs8" });
  return Buffer.from(der.subarray(der.length - 32));
}

/** Verifies an Ed25519 signature (RFC 8032 §5.1.7). */
export function ed25519Verify(pub: Uint8Array, msg: Uint8Array, sig: Uint8Array): boolean {
  if (pub.length !== 32 || sig.length !== 64) return false;
  try {
    return verify(null, msg, ed25519Public(pub), sig);
  } catch {
    return false;
  }
}

/** did:mesh: followed by the first 32 hex digits of SHA-256(public key). */
export function meshDID(pub: Uint8Array): string {
  return "did:mesh:" + createHash("sha256").update(pub).digest("hex").slice(0, 32);
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/** did:agentmesh: followed by base58btc(SHA-256(public key)[0:20]) (§4.1). */
export function agentMeshDID(pub: Uint8Array): string {
  const b = createHash("sha256").update(pub).digest().subarray(0, 20);
  let n = BigInt("0x" + b.toString("hex"));
  let out = "";
  while (n > 0n) {
    out = B58[Number(n % 58n)] + out;
    n /= 58n;
  }
  for (const c of b) {
    if (c !== 0) break;
    out = "1" + out;
  }
  return "did:agentmesh:" + out;
}

/** Reports whether did has the did:mesh: or did:agentmesh: shape. */
export function validDID(did: string): boolean {
  if (did.startsWith("did:mesh:")) return /^[0-9a-f]{32}$/.test(did.slice(9));
  if (did.startsWith("did:agentmesh:")) {
    const rest = did.slice(14);
    return rest.length >= 20 && rest.length <= 30 && [...rest].every((c) => B58.includes(c));
  }
  return false;
}

/** Throws unless did names pub under either DID form. */
export function checkDID(did: string, pub: Uint8Array): void {
  if (pub.length !== 32) throw new Error(`identity: public key is ${pub.length} bytes, want 32`);
  const want = did.startsWith("did:agentmesh:") ? agentMeshDID(pub) : did.startsWith("did:mesh:") ? meshDID(pub) : "";
  if (want === "") throw new Error(`identity: ${JSON.stringify(did)} is neither a did:mesh: nor a did:agentmesh: DID`);
  if (want !== did) throw new Error("identity: DID does not match public key");
}

/** An agent's long-term identity. */
export class Identity {
  readonly #seed: Buffer;
  readonly #ed: KeyObject;
  readonly #x: KeyObject;
  readonly publicKey: Buffer;
  readonly x25519Public: Buffer;
  readonly did: string;

  private constructor(seed: Uint8Array) {
    this.#seed = Buffer.from(seed);
    this.#ed = ed25519Private(this.#seed);
    // §4.4: the X25519 identity key is the clamped SHA-512(seed)[:32]
    // scalar RFC 8032 §5.1.5 signs with (libsodium's
    // crypto_sign_ed25519_sk_to_curve25519).
    const h = createHash("sha512").update(this.#seed).digest();
    const s = h.subarray(0, 32);
    s[0]! &= 248;
    s[31]! &= 127;
    s[31]! |= 64;
    this.#x = x25519Private(s);
    h.fill(0);
    this.publicKey = rawPublic(this.#ed);
    this.x25519Public = rawPublic(this.#x);
    this.did = meshDID(this.publicKey);
  }

  /** Rebuilds an identity from its 32-byte Ed25519 seed. */
  static fromSeed(seed: Uint8Array): Identity {
    if (seed.length !== 32) throw new Error(`identity: seed is ${seed.length} bytes, want 32`);
    return new Identity(seed);
  }

  /** Draws a fresh identity. */
  static generate(): Identity {
    const seed = randomBytes(32);
    try {
      return new Identity(seed);
    } finally {
      seed.fill(0);
    }
  }

  /** The seed, the one secret to persist. */
  seed(): Buffer {
    return Buffer.from(this.#seed);
  }

  /** Signs msg with the Ed25519 key (RFC 8032 §5.1.6). */
  sign(msg: Uint8Array): Buffer {
    return sign(null, msg, this.#ed);
  }

  /** The X25519 identity key (IK) for X3DH. */
  x25519(): KeyObject {
    return this.#x;
  }
}

// GF(2^255-19) and edwards25519 (RFC 8032 §5.1).
const P = (1n << 255n) - 19n;
const mod = (a: bigint): bigint => ((a % P) + P) % P;
function pow(b: bigint, e: bigint): bigint {
  let r = 1n;
  b = mod(b);
  while (e > 0n) {
    if (e & 1n) r = (r * b) % P;
    b = (b * b) % P;
    e >>= 1n;
  }
  return r;
}
const inv = (a: bigint): bigint => pow(a, P - 2n);
const D = mod(-121665n * inv(121666n));
const SQRT_M1 = pow(2n, (P - 1n) / 4n);

function leToBig(b: Uint8Array): bigint {
  let n = 0n;
  for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]!);
  return n;
}

function bigToLE(n: bigint): Buffer {
  const out = Buffer.alloc(32);
  for (let i = 0; i < 32; i++) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

type Point = { x: bigint; y: bigint };

// The complete twisted Edwards addition law (a = -1; d is not a square,
// so the denominators never vanish).
function add(p: Point, q: Point): Point {
  const t = mod(D * p.x * q.x * p.y * q.y);
  return { x: mod((p.x * q.y + p.y * q.x) * inv(1n + t)), y: mod((p.y * q.y + p.x * q.x) * inv(1n - t)) };
}

/**
 * Maps an Ed25519 public key to its X25519 public key (RFC 7748 §4.1,
 * u = (1+y)/(1-y)), refusing encodings that are not a curve point and
 * small-order points, as internal/mesh/identity.X25519FromEd25519 does.
 */
export function x25519FromEd25519(pub: Uint8Array): Buffer {
  if (pub.length !== 32) throw new Error(`identity: Ed25519 key is ${pub.length} bytes, want 32`);
  const b = Buffer.from(pub);
  const sign = b[31]! >> 7;
  b[31]! &= 0x7f;
  const y = mod(leToBig(b)); // non-canonical y is reduced, as edwards25519.SetBytes does
  const y2 = mod(y * y);
  const u = mod(y2 - 1n);
  const v = mod(D * y2 + 1n);
  let x = mod(u * pow(v, 3n) * pow(u * pow(v, 7n), (P - 5n) / 8n));
  const vx2 = mod(v * x * x);
  if (vx2 === mod(-u)) x = mod(x * SQRT_M1);
  else if (vx2 !== u) throw new Error("identity: Ed25519 key is not a curve point");
  if (Number(x & 1n) !== sign) x = mod(-x);
  let q: Point = { x, y };
  for (let i = 0; i < 3; i++) q = add(q, q);
  if (q.x === 0n && q.y === 1n) throw new Error("identity: Ed25519 key is a small-order point");
  return bigToLE(mod((1n + y) * inv(1n - y)));
}
