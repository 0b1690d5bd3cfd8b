// The host's state folder: files written atomically (temporary file,
// fsync, rename) with mode 0600 in a 0700 folder. OpenClaw keeps its own
// credentials the same way (its secret store is "not encrypted at rest",
// docs/gateway/secrets); it offers third-party plugins no encrypted
// store, so neither is this one.

import { createHash } from "node:crypto";
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { canonicalize } from "./jcs.ts";

/** Creates dir 0700 (and tightens it if it existed). */
export function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}

/** Writes data to path atomically with mode 0600. */
export function writeAtomic(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, "w", 0o600);
  try {
    writeSync(fd, typeof data === "string" ? Buffer.from(data, "utf8") : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Reads a JSON file, or undefined when it does not exist. */
export function readJSON<T>(path: string): T | undefined {
  if (!existsSync(path)) return undefined;
  return JSON.parse(readFileSync(path, "utf8")) as T;
}

/** One entry of the host's audit log. */
export interface AuditRecord {
  action: string;
  decision: "allow" | "deny";
  reason: string;
  attrs?: Record<string, string>;
  payload_sha256?: string;
}

/**
 * The host's own audit log: JSON lines, each carrying the SHA-256 of the
 * previous line's hash and its own canonical content, so a removed or
 * edited entry breaks the chain (verifyAudit).
 */
export class AuditLog {
  readonly path: string;
  #seq = 0;
  #prev = "";

  constructor(dir: string) {
    this.path = join(dir, "audit.jsonl");
    if (existsSync(this.path)) {
      const lines = readFileSync(this.path, "utf8").split("\n").filter(Boolean);
      const last = lines.at(-1);
      if (last) {
        const e = JSON.parse(last) as { seq: number; hash: string };
        this.#seq = e.seq;
        this.#prev = e.hash;
      }
    }
  }

  /** Appends rec durably. */
  append(rec: AuditRecord): void {
    const entry: Record<string, unknown> = { seq: this.#seq + 1, at: new Date().toISOString(), agent: "openclaw-kars-mesh", ...rec, prev: this.#prev };
    const hash = createHash("sha256").update(canonicalize(entry)).digest("hex");
    const line = JSON.stringify({ ...entry, hash }) + "\n";
    const fd = openSync(this.path, "a", 0o600);
    try {
      writeSync(fd, line);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.#seq++;
    this.#prev = hash;
  }
}

/** Checks an audit log's chain; returns its entries or throws at the first broken one. */
export function verifyAudit(path: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  let prev = "";
  for (const line of readFileSync(path, "utf8").split("\n").filter(Boolean)) {
    const e = JSON.parse(line) as Record<string, unknown>;
    const { hash, ...rest } = e;
    if (rest.prev !== prev || createHash("sha256").update(canonicalize(rest)).digest("hex") !== hash) {
      throw new Error(`audit entry ${String(e.seq)} breaks the chain`);
    }
    prev = hash as string;
    out.push(e);
  }
  return out;
}

/** A cross-process lock on the state folder (one relay connection per identity). */
export async function lock(dir: string, waitMs = 60_000): Promise<() => void> {
  const path = join(dir, "lock");
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      const fd = openSync(path, "wx", 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => {
        try {
          unlinkSync(path);
        } catch {
          /* already gone */
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const pid = Number(readFileSync(path, "utf8") || "0");
      let alive = pid > 0;
      try {
        if (alive) process.kill(pid, 0);
      } catch {
        alive = false;
      }
      if (!alive) {
        try {
          unlinkSync(path);
        } catch {
          /* raced */
        }
        continue;
      }
      if (Date.now() > deadline) throw new Error(`the kars mesh state in ${dir} is busy (process ${pid})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
