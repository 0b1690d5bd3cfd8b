"""kars adapter for Microsoft Agent Framework, Python (agent-framework-core
with agent-framework-openai).

The agent is an agent_framework.Agent on OpenAIChatCompletionClient, whose
OpenAI client points at the router. Governance is the framework's own
function middleware: it asks the router's decide endpoint before each tool
invocation and, on a refusal, sets the refusal as the result without
calling the next link (the function never runs; the loop goes on). The
conversation is an AgentSession, kept across restarts with to_dict and
from_dict.
"""

import json

from agent_framework import Agent, AgentSession, FunctionInvocationContext, FunctionMiddleware
from agent_framework.openai import OpenAIChatCompletionClient
from openai import AsyncOpenAI

import kars_runtime as kars


class KarsPolicy(FunctionMiddleware):
    """Asks kars-router before any function tool runs."""

    def __init__(self, cfg: kars.Config):
        self.cfg = cfg

    async def process(self, context: FunctionInvocationContext, call_next):
        args = context.arguments
        args = args.model_dump() if hasattr(args, "model_dump") else dict(args or {})
        name = context.function.name
        d = await kars.adecide(self.cfg, name, args)
        rec = kars.record(str(context.metadata.get("call_id", "")) if context.metadata else "", name, args, d)
        if not d.allowed:
            context.result = d.refusal()
            return
        await call_next()
        rec["result"] = context.result if isinstance(context.result, str) else _text(context.result)


def _text(result) -> str:
    if isinstance(result, list):
        return "".join(getattr(c, "text", None) or "" for c in result) or json.dumps(str(result))
    return str(result)


def make_adapter(cfg: kars.Config):
    # The OpenAI client reads OPENAI_BASE_URL and the placeholder key from
    # the contract: the router, OpenAI dialect.
    client = OpenAIChatCompletionClient(model=cfg.model, async_client=AsyncOpenAI(max_retries=0))
    agent = kars.load_entrypoint(cfg, "agent")
    if agent is None:
        agent = Agent(client=client, instructions=cfg.instructions, name="kars", tools=[kars.recorded(t) for t in kars.tools(cfg)])
    policy = KarsPolicy(cfg)

    async def turn(state, message):
        session = AgentSession.from_dict(state) if state else agent.create_session()
        resp = await agent.run(message, session=session, middleware=[policy])
        u = resp.usage_details or {}
        model = cfg.model
        for m in resp.messages:
            model = (getattr(m, "additional_properties", None) or {}).get("model", model)
        return kars.Turn(resp.text, session.to_dict(), model,
                         int(u.get("input_token_count") or 0), int(u.get("output_token_count") or 0))

    return turn


if __name__ == "__main__":
    kars.serve("microsoft-agent-framework", make_adapter)
