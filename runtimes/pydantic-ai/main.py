"""kars adapter for PydanticAI (pydantic-ai-slim[openai]).

The agent is a pydantic_ai.Agent on OpenAIChatModel, whose OpenAI provider
points at the router. Governance is a PydanticAI capability: its
wrap_tool_execute hook asks the router's decide endpoint before the tool
function runs and, on a refusal, returns the refusal as the tool's result
without calling the tool.
"""

from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import kars_runtime as kars


class KarsPolicy(AbstractCapability):
    """Asks kars-router before any tool executes."""

    def __init__(self, cfg: kars.Config):
        self.cfg = cfg

    async def wrap_tool_execute(self, ctx, *, call, tool_def, args, handler):
        raw = call.args_as_dict() if hasattr(call, "args_as_dict") else (call.args or {})
        d = await kars.adecide(self.cfg, call.tool_name, raw)
        kars.record(call.tool_call_id, call.tool_name, raw, d)
        if not d.allowed:
            return d.refusal()
        return await handler(args)


def make_adapter(cfg: kars.Config):
    # OPENAI_BASE_URL and the placeholder key come from the contract.
    model = OpenAIChatModel(cfg.model, provider=OpenAIProvider())
    agent = kars.load_entrypoint(cfg, "agent")
    if agent is None:
        agent = Agent(model, instructions=cfg.instructions, tools=[kars.recorded(t) for t in kars.tools(cfg)])
    policy = KarsPolicy(cfg)

    async def turn(state, message):
        history = ModelMessagesTypeAdapter.validate_python(state) if state else None
        result = await agent.run(message, model=model, message_history=history, capabilities=[policy])
        usage = result.usage
        state = ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json")
        return kars.Turn(str(result.output), state, cfg.model, usage.input_tokens, usage.output_tokens)

    return turn


if __name__ == "__main__":
    kars.serve("pydantic-ai", make_adapter)
