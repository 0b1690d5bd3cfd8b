// Driven by test/interop/offloadplugin (Go): reads a JSON request on
// stdin, does what it names with this package's code, and writes JSON on
// stdout for the Go side to check with kars's own implementation.
//
//   {"step":"initiate", bundle, bob_did, texts, accept_frame}  → frames, knock, auth, connect, redemption, session state
//   {"step":"open", session, frames}                           → plaintexts

import { readFileSync } from "node:fs";
import { Identity } from "../src/identity.ts";
import { redemption } from "../src/mesh.ts";
import { systemRand } from "../src/ratchet.ts";
import { Session, type SessionState } from "../src/session.ts";
import { T, VERSION, authHeader, connectFrame, parseFrame, signFrame, verifyFrame, type Frame } from "../src/wire.ts";
import { parseBundle } from "../src/x3dh.ts";

const req = JSON.parse(readFileSync(0, "utf8"));
const out: Record<string, unknown> = {};
if (req.step === "initiate") {
  const id = Identity.fromSeed(Buffer.from(req.seed, "hex"));
  const s = Session.initiate(systemRand, id, req.bob_did, parseBundle(req.bundle));
  out.frames = (req.texts as string[]).map((t, i) => JSON.stringify(s.seal(Buffer.from(JSON.stringify({ text: t }), "utf8"), `m_${i}`)));
  out.session = s.toJSON();
  const knock: Frame = { v: VERSION, type: T.knock, from: id.did, to: req.bob_did, id: "k_1", ts: "2026-12-07T06:00:00.123456789Z", intent: { action: "mesh:session", description: "caf\u00e9 \u2713 \u{1F512} \"quoted\"\n", capabilities_required: ["offload", "handoff"] } };
  out.knock = JSON.stringify(signFrame(knock, id));
  out.auth = authHeader(id);
  out.connect = JSON.stringify(connectFrame(id));
  out.redemption = redemption(req.token, id);
  out.accept_verifies = verifyFrame(req.accept_frame, Buffer.from(req.bob_ed25519, "hex"));
  const tampered = req.accept_frame.replace('"knock_id":"k_1"', '"knock_id":"k_2"');
  out.tampered_accept_verifies = verifyFrame(tampered, Buffer.from(req.bob_ed25519, "hex"));
} else if (req.step === "open") {
  const s = Session.restore(systemRand, req.session as SessionState);
  out.plaintexts = (req.frames as string[]).map((f) => s.open(parseFrame(f)).toString("utf8"));
}
process.stdout.write(JSON.stringify(out));
