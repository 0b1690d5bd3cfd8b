// kars adapter for LangGraph.js (@langchain/langgraph with @langchain/openai).
//
// The agent is the graph LangGraph's documentation builds: a model node
// (ChatOpenAI with the tools bound) and the prebuilt ToolNode, looping
// until the model stops asking for tools. Governance extends ToolNode's
// runTool, the one place every tool call of the graph goes through: it asks
// the router's decide endpoint and, on a refusal, returns an error
// ToolMessage instead of running the tool.

import { ToolMessage, SystemMessage, mapChatMessagesToStoredMessages, mapStoredMessagesToChatMessages } from "@langchain/core/messages";
import { tool } from "@langchain/core/tools";
import { END, MessagesAnnotation, START, StateGraph } from "@langchain/langgraph";
import { ToolNode, toolsCondition } from "@langchain/langgraph/prebuilt";
import { ChatOpenAI } from "@langchain/openai";

import * as kars from "./kars-runtime.mjs";

const cfg = kars.config();

/** ToolNode whose every call is decided by kars-router first. */
class GovernedToolNode extends ToolNode {
  async runTool(call, config, state) {
    const d = await kars.decide(cfg, call.name, call.args);
    const rec = kars.record(call.id, call.name, call.args, d);
    if (!d.allowed) {
      return new ToolMessage({ content: kars.refusal(d), tool_call_id: call.id, name: call.name, status: "error" });
    }
    const out = await super.runTool(call, config, state);
    if (out instanceof ToolMessage) rec.result = String(out.content);
    return out;
  }
}

const tools = [...kars.tools(cfg), ...(await kars.mcpTools(cfg))].map((t) =>
  tool(async (args) => kars.runTool(t, args), { name: t.name, description: t.description, schema: t.schema }));
// OPENAI_BASE_URL and the placeholder key come from the contract.
const model = new ChatOpenAI({ model: cfg.model, maxRetries: 0, configuration: { baseURL: process.env.OPENAI_BASE_URL } }).bindTools(tools);

const graph = new StateGraph(MessagesAnnotation)
  .addNode("agent", async (state) => ({ messages: [await model.invoke([new SystemMessage(cfg.instructions), ...state.messages])] }))
  .addNode("tools", new GovernedToolNode(tools))
  .addEdge(START, "agent")
  .addConditionalEdges("agent", toolsCondition, ["tools", END])
  .addEdge("tools", "agent")
  .compile();

kars.serve("langgraph-typescript", cfg, async (state, message) => {
  const history = state ? mapStoredMessagesToChatMessages(state) : [];
  const out = await graph.invoke({ messages: [...history, { role: "user", content: message }] }, { recursionLimit: 20 });
  let promptTokens = 0, completionTokens = 0, model = cfg.model;
  for (const m of out.messages.slice(history.length)) {
    promptTokens += m.usage_metadata?.input_tokens ?? 0;
    completionTokens += m.usage_metadata?.output_tokens ?? 0;
    model = m.response_metadata?.model_name ?? model;
  }
  const last = out.messages[out.messages.length - 1];
  return { reply: String(last.content), state: mapChatMessagesToStoredMessages(out.messages), model, promptTokens, completionTokens };
});
