"""kars adapter for the OpenAI Agents SDK (openai-agents).

The agent is an agents.Agent run by agents.Runner against the router's
OpenAI-compatible Chat Completions API. Governance uses the SDK's own tool
hook: a tool input guardrail on every function tool asks the router's decide
endpoint before the tool runs, and a refusal reaches the model as the tool's
output (ToolGuardrailFunctionOutput.reject_content).
"""

import json

from agents import (Agent, FunctionTool, OpenAIChatCompletionsModel, RunConfig, Runner, ToolGuardrailFunctionOutput,
                    function_tool, set_tracing_disabled, tool_input_guardrail)
from openai import AsyncOpenAI

import kars_runtime as kars


def make_adapter(cfg: kars.Config):
    # Traces would go to OpenAI's tracing service, which the sandbox cannot
    # reach; the router's audit log is the record.
    set_tracing_disabled(True)

    @tool_input_guardrail
    async def kars_policy(data):
        ctx = data.context
        args = ctx.tool_arguments
        try:
            parsed = json.loads(args or "{}")
        except ValueError:
            parsed = {}
        d = await kars.adecide(cfg, ctx.tool_name, parsed)
        kars.record(ctx.tool_call_id, ctx.tool_name, args, d)
        if not d.allowed:
            return ToolGuardrailFunctionOutput.reject_content(d.refusal())
        return ToolGuardrailFunctionOutput.allow()

    def governed(tool: FunctionTool) -> FunctionTool:
        tool.tool_input_guardrails = [kars_policy, *(tool.tool_input_guardrails or [])]
        return tool

    client = AsyncOpenAI(max_retries=0)  # OPENAI_BASE_URL and the placeholder key come from the contract
    model = OpenAIChatCompletionsModel(model=cfg.model, openai_client=client)
    agent = kars.load_entrypoint(cfg, "agent")
    if agent is None:
        agent = Agent(name="kars", instructions=cfg.instructions,
                      tools=[function_tool(kars.recorded(t)) for t in kars.tools(cfg)])
    agent = agent.clone(model=model, tools=[governed(t) if isinstance(t, FunctionTool) else t for t in agent.tools])

    async def turn(state, message):
        history = list(state or [])
        result = await Runner.run(agent, history + [{"role": "user", "content": message}],
                                  run_config=RunConfig(tracing_disabled=True))
        usage = result.context_wrapper.usage
        return kars.Turn(str(result.final_output), result.to_input_list(), cfg.model,
                         usage.input_tokens, usage.output_tokens)

    return turn


if __name__ == "__main__":
    kars.serve("openai-agents", make_adapter)
