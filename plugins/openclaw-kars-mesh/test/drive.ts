// Runs one of the plugin's tools once, as an OpenClaw turn would call it,
// and prints its result as JSON: the Go end-to-end test
// (test/e2e/offload_plugin_test.go) drives the plugin through this.
//
//   node test/drive.ts <tool> '<params JSON>'    (state in $KARS_MESH_STATE_DIR)

import { createTools } from "../src/tools.ts";

const [name, params] = process.argv.slice(2);
const stateDir = process.env.KARS_MESH_STATE_DIR;
if (!name || !stateDir) {
  process.stderr.write("usage: KARS_MESH_STATE_DIR=dir node test/drive.ts <tool> '<params JSON>'\n");
  process.exit(2);
}
const answerTimeoutMs = Number(process.env.KARS_MESH_ANSWER_TIMEOUT_MS ?? "0");
const tool = createTools(answerTimeoutMs > 0 ? { stateDir, answerTimeoutMs } : { stateDir }).find((t) => t.name === name);
if (!tool) {
  process.stderr.write(`no tool ${name}\n`);
  process.exit(2);
}
const r = await tool.run(JSON.parse(params ?? "{}"));
process.stdout.write(JSON.stringify(r));
