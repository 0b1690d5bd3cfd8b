// A session with one peer (internal/mesh/session): X3DH to open it,
// then the Double Ratchet inside AgentMesh message frames. The initiator
// repeats the x3dh field on every message until the peer's first answer
// decrypts (X3DH §3.3: any of them may be the first to arrive).

import { b64, unb64, unb64Fixed } from "./b64.ts";
import { type Identity, checkDID } from "./identity.ts";
import { Ratchet, type RatchetState, type Rand } from "./ratchet.ts";
import { T, VERSION, type Frame, type X3DHInit, nowTS } from "./wire.ts";
import { type Bundle, initiate, x3dhField } from "./x3dh.ts";

/** The persisted form, field for field session.sessionJSON (byte slices as standard base64, as Go writes them). */
export interface SessionState {
  self: string;
  peer: string;
  ad: string;
  peer_identity_key: string;
  ratchet: RatchetState;
  x3dh?: X3DHInit;
}

/** An encrypted conversation with one peer. */
export class Session {
  readonly self: string;
  readonly peer: string;
  #ad: Buffer;
  #peerIK: Buffer;
  #r: Ratchet;
  #init: X3DHInit | undefined;

  private constructor(self: string, peer: string, ad: Buffer, peerIK: Buffer, r: Ratchet, init: X3DHInit | undefined) {
    this.self = self;
    this.peer = peer;
    this.#ad = ad;
    this.#peerIK = peerIK;
    this.#r = r;
    this.#init = init;
  }

  /** Opens a session to peerDID from its fetched bundle. */
  static initiate(rand: Rand, self: Identity, peerDID: string, b: Bundle): Session {
    checkDID(peerDID, b.identityKeyEd);
    const in_ = initiate(rand, self, b);
    try {
      const r = Ratchet.initSender(rand, in_.sharedSecret, in_.remoteSignedPreKey);
      return new Session(self.did, peerDID, in_.ad, b.identityKey, r, x3dhField(in_, self));
    } finally {
      in_.sharedSecret.fill(0);
    }
  }

  /** Encrypts plaintext into a message frame with the given id. */
  seal(plaintext: Uint8Array, id: string, now?: Date): Frame {
    const m = this.#r.encrypt(plaintext, this.#ad);
    const f: Frame = {
      v: VERSION, type: T.message, from: this.self, to: this.peer, id, ts: nowTS(now),
      header: { dh: b64(m.header.dh), pn: m.header.pn, n: m.header.n },
      ciphertext: b64(m.ciphertext),
    };
    if (this.#init) f.x3dh = { ...this.#init };
    return f;
  }

  /** Decrypts a message frame from the peer; on error the session is unchanged. */
  open(f: Frame): Buffer {
    if (f.type !== T.message || f.from !== this.peer || !f.header || !f.ciphertext) {
      throw new Error(`session: frame is a ${f.type} from ${f.from}, want a message from ${this.peer}`);
    }
    const pt = this.#r.decrypt({ header: { dh: unb64Fixed(f.header.dh, 32, "header dh"), pn: f.header.pn, n: f.header.n }, ciphertext: unb64(f.ciphertext) }, this.#ad);
    this.#init = undefined; // the peer has the session; stop repeating x3dh
    return pt;
  }

  /** The state, secrets included. */
  toJSON(): SessionState {
    const s: SessionState = { self: this.self, peer: this.peer, ad: this.#ad.toString("base64"), peer_identity_key: this.#peerIK.toString("base64"), ratchet: this.#r.toJSON() };
    if (this.#init) s.x3dh = this.#init;
    return s;
  }

  /** Rebuilds a session from toJSON's output (or Go's MarshalJSON). */
  static restore(rand: Rand, j: SessionState): Session {
    return new Session(j.self, j.peer, Buffer.from(j.ad, "base64"), Buffer.from(j.peer_identity_key, "base64"), Ratchet.restore(rand, j.ratchet), j.x3dh);
  }

  /** Zeroes the session's secrets. */
  close(): void {
    this.#r.zero();
  }
}
