// Unit tests of the plugin's pure parts: RFC 8785, base64 strictness,
// frame and broker-message parsing, the ratchet's transactional decrypt,
// skipped keys and persistence, pairing tokens and the audit chain.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { unb64 } from "../src/b64.ts";
import { canonicalize } from "../src/jcs.ts";
import { Identity } from "../src/identity.ts";
import { Ratchet, RatchetError, newKey, systemRand } from "../src/ratchet.ts";
import { rawPublic } from "../src/identity.ts";
import { parseFrame, signFrame, verifyFrame, nowTS, T, VERSION, type Frame } from "../src/wire.ts";
import { parseBrokerMessage, taskText, declare, checkDescriptor } from "../src/offload.ts";
import { parseToken, openEnvelope, Host } from "../src/host.ts";
import { AuditLog, verifyAudit } from "../src/store.ts";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

test("RFC 8785 numbers: every vector of internal/jcs/testdata/es6numbers.txt", () => {
  let n = 0;
  for (const line of readFileSync(repo + "internal/jcs/testdata/es6numbers.txt", "utf8").split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const [bits, want] = line.split(" ");
    const v = Buffer.from(bits!, "hex").readDoubleBE(0);
    if (!Number.isFinite(v)) continue;
    assert.equal(canonicalize(v), want, bits);
    n++;
  }
  assert.ok(n > 400, `${n} vectors`);
});

test("RFC 8785 objects: UTF-16 member order, escapes, no whitespace", () => {
  // U+1F600 (a surrogate pair, D83D…) sorts before U+FFFD in UTF-16 order,
  // after it in code point order.
  assert.equal(canonicalize({ "\uFFFD": 1, "\u{1F600}": 2, b: [true, null, "x\n\"\u0001"], a: { z: 1e21, y: -0 } }),
    '{"a":{"y":0,"z":1e+21},"b":[true,null,"x\\n\\"\\u0001"],"\u{1F600}":2,"\uFFFD":1}');
  assert.throws(() => canonicalize(NaN));
  assert.throws(() => canonicalize({ a: [[[1]]] }, 2), /too deeply/);
});

test("base64: both alphabets, padded or not, nothing else", () => {
  assert.deepEqual(unb64("-_8"), Buffer.from([0xfb, 0xff]));
  assert.deepEqual(unb64("+/8="), Buffer.from([0xfb, 0xff]));
  for (const bad of ["+_8", "ab c", "a", "-_9", "ab=c", "abc=="]) assert.throws(() => unb64(bad), Error, bad);
});

test("frames: signatures cover the whole frame; parsers refuse what kars refuses", () => {
  const id = Identity.generate();
  const peer = Identity.generate();
  const f: Frame = { v: VERSION, type: T.knock, from: id.did, to: peer.did, id: "k_1", ts: nowTS(), intent: { action: "mesh:session" } };
  const raw = JSON.stringify(signFrame(f, id));
  assert.ok(verifyFrame(raw, id.publicKey));
  assert.ok(!verifyFrame(raw, peer.publicKey));
  assert.ok(!verifyFrame(raw.replace(peer.did, id.did), id.publicKey), "re-pointed at another agent");
  // Member order and whitespace do not matter (canonical form).
  const reordered = JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(raw)).reverse()), null, 2);
  assert.ok(verifyFrame(reordered, id.publicKey));
  assert.equal(parseFrame(raw).type, T.knock);
  for (const bad of [
    '{"v":2,"type":"ack","id":"x"}',
    '{"type":"nope"}',
    `{"type":"message","from":"${id.did}","to":"${peer.did}","id":"m"}`,
    `{"type":"knock","from":"did:mesh:XYZ","to":"${peer.did}","id":"k","intent":{"action":"a"}}`,
    '{"type":"ack"}',
    "[]",
  ]) assert.throws(() => parseFrame(bad), /invalid frame/, bad);
  const a = nowTS(), b = nowTS();
  assert.ok(a < b && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/.test(a), `${a} ${b}`);
});

function pair(): [Ratchet, Ratchet, Buffer] {
  const sk = randomBytes(32);
  const spk = newKey(systemRand);
  return [Ratchet.initSender(systemRand, sk, rawPublic(spk)), Ratchet.initReceiver(systemRand, sk, spk), randomBytes(64)];
}

test("ratchet: out-of-order delivery, replay and tampering refused without harm", () => {
  const [a, b, ad] = pair();
  const m = [0, 1, 2].map((i) => a.encrypt(Buffer.from("a" + i), ad));
  assert.equal(b.decrypt(m[2]!, ad).toString(), "a2"); // skips 0 and 1
  assert.equal(b.decrypt(m[0]!, ad).toString(), "a0");
  assert.throws(() => b.decrypt(m[0]!, ad), (e) => e instanceof RatchetError && e.kind === "replay");
  const bad = { ...m[1]!, ciphertext: Buffer.from(m[1]!.ciphertext) };
  bad.ciphertext[20]! ^= 1;
  assert.throws(() => b.decrypt(bad, ad), (e) => e instanceof RatchetError && e.kind === "auth");
  assert.equal(b.decrypt(m[1]!, ad).toString(), "a1");
  const r = b.encrypt(Buffer.from("back"), ad);
  assert.throws(() => a.decrypt(r, Buffer.alloc(64)), (e) => e instanceof RatchetError && e.kind === "auth");
  assert.equal(a.decrypt(r, ad).toString(), "back");
});

test("ratchet: more than MAX_SKIP skipped keys is refused", () => {
  const [a, b, ad] = pair();
  b.decrypt(a.encrypt(Buffer.from("first"), ad), ad);
  let last;
  for (let i = 0; i < 102; i++) last = a.encrypt(Buffer.from("x"), ad);
  assert.throws(() => b.decrypt(last!, ad), (e) => e instanceof RatchetError && e.kind === "too_many_skipped");
});

test("ratchet: state survives toJSON/restore, skipped keys included", () => {
  const [a, b, ad] = pair();
  const m0 = a.encrypt(Buffer.from("zero"), ad);
  const m1 = a.encrypt(Buffer.from("one"), ad);
  b.decrypt(m1, ad);
  const b2 = Ratchet.restore(systemRand, JSON.parse(JSON.stringify(b.toJSON())));
  assert.equal(b2.decrypt(m0, ad).toString(), "zero");
  const a2 = Ratchet.restore(systemRand, a.toJSON());
  assert.equal(b2.decrypt(a2.encrypt(Buffer.from("two"), ad), ad).toString(), "two");
  assert.throws(() => Ratchet.restore(systemRand, { ...a.toJSON(), root_key: "00" }), /root_key/);
});

test("broker messages: answers and events only, no unknown members", () => {
  assert.equal(parseBrokerMessage('{"v":1,"op":"answer","re":"r1","ok":false,"error":{"code":"slots_exhausted","message":"m"}}').error?.code, "slots_exhausted");
  for (const bad of ['{"v":2,"op":"answer","re":"r","ok":true}', '{"v":1,"op":"answer","ok":true}', '{"v":1,"op":"event","ok":true}', '{"v":1,"op":"answer","re":"r","ok":true,"extra":1}']) {
    assert.throws(() => parseBrokerMessage(bad), Error, bad);
  }
});

test("task descriptors: only the instruction and the named inputs make the text", () => {
  const t = { title: "sum", instruction: " add these ", inputs: [{ name: "a.csv", content: "1,2" }] };
  const text = taskText(t);
  assert.equal(text, "add these\n\n--- input: a.csv ---\n1,2\n--- end of a.csv ---");
  assert.equal(declare("sum", text).bytes, Buffer.byteLength(text));
  assert.throws(() => checkDescriptor({ title: "", instruction: "x" }), /title/);
  assert.throws(() => checkDescriptor({ title: "t", instruction: "x", limits: { ttl_seconds: 90000 } }), /limits/);
});

function token(p: Record<string, unknown>): string {
  return "azc_pair_v1_" + Buffer.from(canonicalize(p)).toString("base64url") + "." + Buffer.alloc(64).toString("base64url");
}

test("pairing tokens: parsed for where to redeem; expired ones refused before anything is sent", async () => {
  const p = { v: 1, name: "alice-laptop", nonce: "AAAAAAAAAAAAAAAAAAAAAA", kid: "k", issuer: Identity.generate().did, registry: "http://127.0.0.1:9", relay: "ws://127.0.0.1:9/ws", slots: 1, exp: 1, capabilities: ["offload"] };
  assert.equal(parseToken(token(p)).name, "alice-laptop");
  assert.throws(() => parseToken("nope"), /not a kars pairing token/);
  const dir = mkdtempSync(join(tmpdir(), "kars-mesh-"));
  const h = Host.open(dir);
  await assert.rejects(h.pair(token(p)), /expired/);
  await assert.rejects(h.pair(token({ ...p, exp: 4e9, issuer: undefined })), /names no issuer/);
  // Nothing was paired, and the token is nowhere in the state folder.
  assert.equal(h.pairing, undefined);
  for (const f of ["identity.seed", "audit.jsonl"]) assert.ok(!readFileSync(join(dir, f)).includes("azc_pair"), f);
  assert.equal(statSync(join(dir, "identity.seed")).mode & 0o777, 0o600);
  assert.equal(statSync(dir).mode & 0o777, 0o700);
});

test("the audit log is a hash chain: an edited entry breaks it", () => {
  const dir = mkdtempSync(join(tmpdir(), "kars-audit-"));
  const log = new AuditLog(dir);
  log.append({ action: "mesh:send:kars", decision: "allow", reason: "r1" });
  log.append({ action: "mesh:receive:kars", decision: "allow", reason: "r2" });
  assert.equal(new AuditLog(dir).path, log.path);
  assert.equal(verifyAudit(log.path).length, 2);
  writeFileSync(log.path, readFileSync(log.path, "utf8").replace("r1", "r9"));
  assert.throws(() => verifyAudit(log.path), /breaks the chain/);
});

test("envelopes: kars routers' {text, in_reply_to} or raw text", () => {
  assert.deepEqual(openEnvelope(Buffer.from('{"text":"hi","in_reply_to":"m_1"}')), { text: "hi", in_reply_to: "m_1" });
  assert.deepEqual(openEnvelope(Buffer.from("plain")), { text: "plain" });
});

test("parsers of untrusted input throw Errors, never anything else, on mutated frames", () => {
  const id = Identity.generate();
  const peer = Identity.generate();
  const seeds = [
    JSON.stringify(signFrame({ v: VERSION, type: T.knockAccept, from: peer.did, to: id.did, id: "k_2", ts: nowTS(), knock_id: "k_1", conditions: { ttl_seconds: 60 } }, peer)),
    JSON.stringify({ v: 1, type: "message", from: peer.did, to: id.did, id: "m_1", header: { dh: Buffer.alloc(32).toString("base64url"), pn: 0, n: 1 }, ciphertext: Buffer.alloc(40).toString("base64url") }),
    '{"v":1,"op":"event","event":"revoked","ok":false,"error":{"code":"pairing_revoked","message":"m"}}',
  ];
  let rnd = 12345;
  const next = () => (rnd = (rnd * 1103515245 + 12345) & 0x7fffffff);
  for (let i = 0; i < 5000; i++) {
    const s = Buffer.from(seeds[i % seeds.length]!);
    for (let j = 0; j < 1 + (next() % 4); j++) s[next() % s.length] = next() % 256;
    const text = s.toString("utf8");
    for (const parse of [parseFrame, parseBrokerMessage, (t: string) => verifyFrame(t, peer.publicKey)]) {
      try {
        parse(text);
      } catch (e) {
        assert.ok(e instanceof Error, `${String(e)} from ${JSON.stringify(text)}`);
      }
    }
  }
});
