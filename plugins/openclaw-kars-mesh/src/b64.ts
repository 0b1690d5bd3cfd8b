// Base64 as the AgentMesh wire uses it (internal/mesh/wire/b64.go): keys,
// signatures and ciphertext travel as unpadded base64url (Wire Protocol
// 1.0 §6.1, §9.3); readers also accept standard base64, padded or not,
// because the toolkit's relay sends it in connect frames.

/** Encodes b as unpadded base64url. */
export function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64url");
}

/** Encodes b as padded standard base64. */
export function b64std(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

const URL_RE = /^[A-Za-z0-9_-]*={0,2}$/;
const STD_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Decodes base64url or standard base64 strictly: one alphabet, padding
 * only where it belongs, no stray characters (Node's decoder would skip
 * them silently, Go's strict decoder refuses them).
 */
export function unb64(s: string): Buffer {
  const std = /[+/]/.test(s);
  if (std ? !STD_RE.test(s) || /[-_]/.test(s) : !URL_RE.test(s)) {
    throw new Error("not base64 or base64url");
  }
  const padded = s.endsWith("=");
  if (padded && s.length % 4 !== 0) throw new Error("bad base64 padding");
  const body = s.replace(/=+$/, "");
  if (body.length % 4 === 1) throw new Error("bad base64 length");
  const out = Buffer.from(body, std ? "base64" : "base64url");
  // Re-encoding must give the input back: this refuses non-zero trailing
  // bits, as Go's Strict decoders do.
  const again = out.toString(std ? "base64" : "base64url").replace(/=+$/, "");
  if (again !== body) throw new Error("non-canonical base64");
  return out;
}

/** Decodes a base64 value that must be exactly n bytes. */
export function unb64Fixed(s: unknown, n: number, what: string): Buffer {
  if (typeof s !== "string") throw new Error(`${what} is missing`);
  let b: Buffer;
  try {
    b = unb64(s);
  } catch {
    throw new Error(`${what} is not base64url`);
  }
  if (b.length !== n) throw new Error(`${what} is ${b.length} bytes, want ${n}`);
  return b;
}
