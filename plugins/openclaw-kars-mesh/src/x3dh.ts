// X3DH (Signal, rev. 1) with the AgentMesh Wire Protocol 1.0 §7
// parameters, the initiator's side, as internal/mesh/x3dh implements it:
// curve X25519, SK = HKDF-SHA256(salt = 32 zero bytes, IKM = 32×0xFF ‖
// DH1 ‖ DH2 ‖ DH3 [‖ DH4], info "AgentMesh_X3DH_v1", 32 bytes), AD =
// IK_A ‖ IK_B, the X25519 identity key derived from the Ed25519 key
// (§4.4) and the signed prekey signed with plain Ed25519.

import { hkdfSync, timingSafeEqual } from "node:crypto";
import { b64, unb64Fixed } from "./b64.ts";
import { type Identity, ed25519Verify, x25519FromEd25519, rawPublic } from "./identity.ts";
import { type Rand, dh, newKey } from "./ratchet.ts";

const INFO = Buffer.from("AgentMesh_X3DH_v1");

/** A responder's prekey bundle as GET /v1/agents/{did}/prekeys serves it (§11.3). */
export interface Bundle {
  identityKey: Buffer; // X25519
  identityKeyEd: Buffer;
  signedPreKey: { id: number; publicKey: Buffer; signature: Buffer };
  oneTimePreKey: { id: number; publicKey: Buffer } | null;
}

/** Decodes a fetched bundle (wire.ParseBundleResponse). */
export function parseBundle(body: unknown): Bundle {
  const r = body as Record<string, any>;
  if (typeof r !== "object" || r === null) throw new Error("bundle is not a JSON object");
  const spk = r.signed_pre_key ?? {};
  const opk = r.one_time_pre_key;
  const id = (v: unknown, what: string): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new Error(`${what} is not a 32-bit key id`);
    return v;
  };
  return {
    identityKey: unb64Fixed(r.identity_key, 32, "identity_key"),
    identityKeyEd: unb64Fixed(r.identity_key_ed, 32, "identity_key_ed (the signed prekey cannot be verified without it)"),
    signedPreKey: { id: id(spk.key_id, "signed_pre_key.key_id"), publicKey: unb64Fixed(spk.public_key, 32, "signed_pre_key.public_key"), signature: unb64Fixed(spk.signature, 64, "signed_pre_key.signature") },
    oneTimePreKey: opk == null ? null : { id: id(opk.key_id, "one_time_pre_key.key_id"), publicKey: unb64Fixed(opk.public_key, 32, "one_time_pre_key.public_key") },
  };
}

/**
 * Checks a bundle before use (X3DH §3.3): the prekey signature under the
 * Ed25519 identity key, and that the X25519 identity key is that key's
 * image (§4.4), so a registry cannot splice its own DH key next to a
 * genuine signing key.
 */
export function verifyBundle(b: Bundle): void {
  const x = x25519FromEd25519(b.identityKeyEd);
  if (!timingSafeEqual(x, b.identityKey)) throw new Error("x3dh: X25519 identity key is not the Ed25519 identity key's");
  if (!ed25519Verify(b.identityKeyEd, b.signedPreKey.publicKey, b.signedPreKey.signature)) {
    throw new Error("x3dh: signed prekey signature does not verify");
  }
}

/** What the initiator learns and sends in the first messages' x3dh field. */
export interface Initiation {
  sharedSecret: Buffer;
  identityKey: Buffer;
  ephemeralKey: Buffer;
  usedOPK: number | null;
  ad: Buffer;
  remoteSignedPreKey: Buffer;
}

/** The initiator's side (X3DH §3.3) against a bundle it verifies first. */
export function initiate(rand: Rand, self: Identity, b: Bundle): Initiation {
  verifyBundle(b);
  const ek = newKey(rand);
  // DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B),
  // DH4 = DH(EK_A, OPK_B) when the bundle has a one-time prekey.
  const parts = [Buffer.alloc(32, 0xff), dh(self.x25519(), b.signedPreKey.publicKey), dh(ek, b.identityKey), dh(ek, b.signedPreKey.publicKey)];
  if (b.oneTimePreKey) parts.push(dh(ek, b.oneTimePreKey.publicKey));
  const km = Buffer.concat(parts);
  parts.forEach((p) => p.fill(0));
  const sk = Buffer.from(hkdfSync("sha256", km, Buffer.alloc(32), INFO, 32));
  km.fill(0);
  return {
    sharedSecret: sk,
    identityKey: self.x25519Public,
    ephemeralKey: rawPublic(ek),
    usedOPK: b.oneTimePreKey ? b.oneTimePreKey.id : null,
    ad: Buffer.concat([self.x25519Public, b.identityKey]),
    remoteSignedPreKey: b.signedPreKey.publicKey,
  };
}

/** The x3dh field for an initiation (§9.4 plus kars's identity_key_ed). */
export function x3dhField(in_: Initiation, self: Identity) {
  return { identity_key: b64(in_.identityKey), ephemeral_key: b64(in_.ephemeralKey), used_opk_id: in_.usedOPK, identity_key_ed: b64(self.publicKey) };
}
