// A foreign A2A agent built on the official JavaScript SDK (@a2a-js/sdk),
// calling a kars sandbox through the kars-a2a-gateway — the counterpart of
// client.py: it signs its own card with the SDK, authenticates with a TLS
// client certificate of the same key, verifies the sandbox's card with the
// SDK's verifier against the pinned key, then sends, runs a background
// task, cancels a slow one, streams and (1.0) lists over the A2A version
// asked for. It prints one JSON object; interop_test.go judges it.
import { createHash, createPrivateKey, createPublicKey, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import * as jose from 'jose';
import { AgentCard, canonicalizeAgentCard, generateAgentCardSignature, verifyAgentCardSignature } from '@a2a-js/sdk';
import { ClientFactory, ClientFactoryOptions, JsonRpcTransportFactory } from '@a2a-js/sdk/client';

const CARD_HEADER = 'Kars-A2A-Caller-Card';
// The SDK reports each failed signature on console.debug; the report this
// program prints is the last line of stdout, so keep those off it.
console.debug = (...args) => process.stderr.write(args.map(String).join(' ') + '\n');
const b64url = (b) => Buffer.from(b).toString('base64url');

// tlsFetch is fetch over node:https with a client certificate (Node's
// built-in fetch cannot present one).
function tlsFetch({ ca, cert, key, headers: extra }) {
  const agent = new https.Agent({ ca, cert, key, keepAlive: true });
  return (input, init = {}) => new Promise((resolve, reject) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    const headers = { ...Object.fromEntries(new Headers(init.headers ?? {})), ...extra };
    const req = https.request(url, { method: init.method ?? 'GET', headers, agent }, (res) => {
      const h = new Headers();
      for (const [k, v] of Object.entries(res.headers)) h.set(k, Array.isArray(v) ? v.join(', ') : v);
      resolve(new Response(res.statusCode === 204 ? null : Readable.toWeb(res), { status: res.statusCode, headers: h }));
    });
    req.on('error', reject);
    init.signal?.addEventListener('abort', () => req.destroy(new Error('aborted')));
    if (init.body) req.write(init.body);
    req.end();
  });
}

function rfc7638(jwk) {
  return 'sha256:' + createHash('sha256').update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x })).digest('hex');
}

async function signedCallerCard(keyPem, name) {
  const key = createPrivateKey(keyPem);
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  const card = AgentCard.fromJSON({
    name, description: 'a foreign agent on the official A2A JavaScript SDK', version: '1.3.0',
    supportedInterfaces: [{ url: 'https://js.partner.example/a2a', protocolBinding: 'JSONRPC', protocolVersion: '1.0' }],
    capabilities: {}, defaultInputModes: ['text/plain'], defaultOutputModes: ['text/plain'],
    skills: [{ id: 'plan', name: 'plan', description: 'plans trips', tags: ['planning'] }],
  });
  const signed = await generateAgentCardSignature(key, { alg: 'EdDSA', kid: 'js-partner', typ: 'JOSE', jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x } })(card);
  return b64url(JSON.stringify(AgentCard.toJSON(signed)));
}

const message = (text, skill) => ({
  messageId: randomUUID(), contextId: '', taskId: '', role: 1 /* ROLE_USER */,
  parts: [{ content: { $case: 'text', value: text } }], metadata: { skill }, extensions: [], referenceTaskIds: [],
});
const request = (text, skill, returnImmediately = false) => ({
  tenant: '', message: message(text, skill), metadata: undefined,
  configuration: { acceptedOutputModes: [], taskPushNotificationConfig: undefined, returnImmediately },
});
const textOf = (parts) => parts.map((p) => (p.content?.$case === 'text' ? p.content.value : '')).join('');
const STATE = ['TASK_STATE_UNSPECIFIED', 'TASK_STATE_SUBMITTED', 'TASK_STATE_WORKING', 'TASK_STATE_COMPLETED', 'TASK_STATE_FAILED',
  'TASK_STATE_CANCELED', 'TASK_STATE_INPUT_REQUIRED', 'TASK_STATE_REJECTED', 'TASK_STATE_AUTH_REQUIRED'];
const stateName = (s) => (typeof s === 'number' ? STATE[s] : s);
const terminal = (s) => ['TASK_STATE_COMPLETED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELED', 'TASK_STATE_REJECTED'].includes(stateName(s));

async function main() {
  const { values: a } = parseArgs({ options: {
    url: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
    'card-key': { type: 'string' }, version: { type: 'string' }, slow: { type: 'string' }, skill: { type: 'string', default: 'search.web' },
  } });
  const keyPem = readFileSync(a.key);
  const fetchImpl = tlsFetch({ ca: readFileSync(a.ca), cert: readFileSync(a.cert), key: keyPem,
    headers: { [CARD_HEADER]: await signedCallerCard(keyPem, 'js-partner') } });
  const out = { version: a.version };

  // The sandbox's card, verified by the SDK against the pinned key.
  const jwks = await (await fetchImpl(a.url + '/.well-known/jwks.json')).json();
  const jwk = jwks.keys.find((k) => k.kid === a['card-key']);
  if (!jwk || rfc7638(jwk) !== a['card-key']) throw new Error(`no JWKS key with the pinned thumbprint ${a['card-key']}`);
  const verify = verifyAgentCardSignature(async (kid) => {
    if (kid !== a['card-key']) throw new Error(`unexpected key ${kid}`);
    return jose.importJWK(jwk, 'EdDSA');
  });
  const raw = await (await fetchImpl(a.url + '/.well-known/agent-card.json')).json();
  // The verifier canonicalises the card's JSON form (as served).
  await verify(raw);
  const card = AgentCard.fromJSON(raw);
  out.cardVerified = true;
  out.cardName = card.name;
  const tampered = structuredClone(raw);
  tampered.skills[0].description += ' (and more)';
  try { await verify(tampered); out.tamperedRefused = false; } catch { out.tamperedRefused = true; }
  // The 0.3 card's signature, over its own canonical form (RFC 8785).
  const raw03 = await (await fetchImpl(a.url + '/.well-known/agent.json')).json();
  const [sig] = raw03.signatures;
  delete raw03.signatures;
  await jose.flattenedVerify({ protected: sig.protected, signature: sig.signature, payload: b64url(canonicalJSON(raw03)) },
    await jose.importJWK(jwk, 'EdDSA'));
  out.card03Verified = true;

  if (a.version === '0.3') card.supportedInterfaces = card.supportedInterfaces.filter((i) => i.protocolVersion.startsWith('0.3'));
  const factory = new ClientFactory(ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
    transports: [new JsonRpcTransportFactory({ fetchImpl, legacyCompat: { enabled: true } })],
  }));
  const client = await factory.createFromAgentCard(card);

  const sent = await client.sendMessage(request('hello from javascript', a.skill));
  out.send = sent.parts ? textOf(sent.parts) : 'task:' + stateName(sent.status?.state);

  let task = await client.sendMessage(request('work in the background', a.skill, true));
  for (let i = 0; i < 200; i++) { // fetched at least once, until done
    task = await client.getTask({ tenant: '', id: task.id, historyLength: undefined });
    if (terminal(task.status.state)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  out.task = { state: stateName(task.status.state), text: task.artifacts.map((x) => textOf(x.parts)).join('') };

  const slow = await client.sendMessage(request(a.slow, a.skill, true));
  const canceled = await client.cancelTask({ tenant: '', id: slow.id, metadata: undefined });
  out.cancel = stateName(canceled.status.state);

  const states = [];
  let streamed = '';
  for await (const ev of client.sendMessageStream(request('stream to javascript', a.skill))) {
    const p = ev.payload;
    if (p?.$case === 'task') states.push(stateName(p.value.status.state));
    else if (p?.$case === 'statusUpdate') states.push(stateName(p.value.status.state));
    else if (p?.$case === 'artifactUpdate') streamed += textOf(p.value.artifact.parts);
  }
  out.stream = { states, text: streamed };

  if (a.version === '1.0') out.listed = (await client.listTasks({ tenant: '', contextId: '', status: 0, pageToken: '' })).tasks.length;
  console.log(JSON.stringify(out));
}

// canonicalJSON is RFC 8785 for the values an A2A 0.3 card holds (strings,
// integers, booleans, arrays, objects): members sorted by UTF-16 code units,
// JSON.stringify's escaping and number form.
function canonicalJSON(v) {
  if (Array.isArray(v)) return '[' + v.map(canonicalJSON).join(',') + ']';
  if (v && typeof v === 'object') {
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonicalJSON(v[k])).join(',') + '}';
  }
  return JSON.stringify(v);
}

main().then(() => process.exit(0), (e) => { console.log(JSON.stringify({ error: `${e.name}: ${e.message}` })); process.exit(1); });

void canonicalizeAgentCard;
