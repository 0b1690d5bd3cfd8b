// RFC 8785 JSON Canonicalization Scheme (internal/jcs/jcs.go): object
// members sorted by the UTF-16 code units of their names (§3.2.3), no
// whitespace, strings escaped as ECMAScript's JSON.stringify escapes them
// (§3.2.2.2) and numbers in ECMAScript's Number-to-String form
// (§3.2.2.3). In JavaScript the last two are the language's own
// JSON.stringify and String(number), which is why the scheme is defined
// that way.

/** A JSON value as JSON.parse returns it. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [k: string]: JSONValue };

/** Canonical JSON text of v; maxDepth > 0 refuses deeper nesting. */
export function canonicalize(v: unknown, maxDepth = 0): string {
  return write(v, 0, maxDepth);
}

function write(v: unknown, depth: number, maxDepth: number): string {
  if (maxDepth > 0 && depth > maxDepth) throw new Error("jcs: value nested too deeply");
  if (v === null) return "null";
  switch (typeof v) {
    case "boolean":
      return v ? "true" : "false";
    case "number":
      if (!Number.isFinite(v)) throw new Error("jcs: NaN and Infinity are not JSON numbers");
      return Object.is(v, -0) ? "0" : String(v);
    case "string":
      return JSON.stringify(v);
    case "object": {
      if (Array.isArray(v)) return "[" + v.map((e) => write(e, depth + 1, maxDepth)).join(",") + "]";
      const o = v as Record<string, unknown>;
      // Array.prototype.sort compares UTF-16 code units, as §3.2.3 asks.
      const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
      return "{" + keys.map((k) => JSON.stringify(k) + ":" + write(o[k], depth + 1, maxDepth)).join(",") + "}";
    }
    default:
      throw new Error(`jcs: unsupported value of type ${typeof v}`);
  }
}
