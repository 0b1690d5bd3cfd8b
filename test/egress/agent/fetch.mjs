// Node's built-in fetch ignores HTTP(S)_PROXY: it reaches the router only
// because the egress guard redirects its connections there.
const url = process.argv[2];
try {
  const r = await fetch(url, { signal: AbortSignal.timeout(10000) });
  console.log(r.status, (await r.text()).trim());
} catch (e) {
  console.log(e.name, e.message, e.cause ? `${e.cause.code ?? ""} ${e.cause.message ?? e.cause}` : "");
  process.exit(1);
}
