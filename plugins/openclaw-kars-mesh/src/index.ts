// The OpenClaw plugin entry: registers the kars mesh tools with
// OpenClaw's plugin API (api.registerTool, declared in
// openclaw.plugin.json's contracts.tools). State lives under OpenClaw's
// state folder (api.runtime.state.resolveStateDir), in
// plugins/kars-mesh, unless plugins.entries.kars-mesh.config.stateDir says
// otherwise.

import { join } from "node:path";
import { homedir } from "node:os";
import { createTools, type ToolConfig } from "./tools.ts";

/** The slice of OpenClaw's plugin API this plugin uses. */
interface PluginApi {
  pluginConfig?: Record<string, unknown>;
  runtime?: { state?: { resolveStateDir?: (env: NodeJS.ProcessEnv) => string } };
  registerTool(tool: {
    name: string;
    label?: string;
    description: string;
    parameters: Record<string, unknown>;
    execute(toolCallId: string, params: Record<string, unknown>): Promise<{ content: { type: "text"; text: string }[]; details?: unknown; isError?: boolean }>;
  }): void;
}

/** The plugin's configuration (openclaw.plugin.json configSchema). */
export function config(api: PluginApi): ToolConfig {
  const c = api.pluginConfig ?? {};
  const str = (k: string) => (typeof c[k] === "string" && c[k] !== "" ? (c[k] as string) : undefined);
  const base = api.runtime?.state?.resolveStateDir?.(process.env) ?? process.env.OPENCLAW_STATE_DIR ?? join(homedir(), ".openclaw");
  const cfg: ToolConfig = { stateDir: str("stateDir") ?? join(base, "plugins", "kars-mesh") };
  const registry = str("registry") ?? process.env.KARS_MESH_REGISTRY;
  const relay = str("relay") ?? process.env.KARS_MESH_RELAY;
  if (registry) cfg.registry = registry;
  if (relay) cfg.relay = relay;
  if (typeof c.offloadWaitSeconds === "number") cfg.offloadWaitSeconds = c.offloadWaitSeconds;
  return cfg;
}

export default {
  id: "kars-mesh",
  name: "kars mesh",
  description: "Offload tasks to governed kars cloud sandboxes over the end-to-end encrypted AgentMesh.",
  register(api: PluginApi): void {
    const cfg = config(api);
    for (const t of createTools(cfg)) {
      api.registerTool({
        name: t.name,
        label: t.label,
        description: t.description,
        parameters: t.parameters,
        async execute(_id, params) {
          const r = await t.run({ ...(params ?? {}) });
          return { content: [{ type: "text", text: r.text }], details: r.details, ...(r.isError ? { isError: true } : {}) };
        },
      });
    }
  },
};
