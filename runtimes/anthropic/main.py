"""kars adapter for the Anthropic SDK (anthropic), Messages API.

The Anthropic SDK is a client, not a framework: the agent is the tool-use
loop Anthropic documents - messages.create with tools, run each tool_use
block, send tool_result blocks back - against the router's Messages API
(ANTHROPIC_BASE_URL). Every tool_use is decided by the router before it
runs; a refusal goes back as a tool_result with is_error set.
"""

import inspect

import anthropic

import kars_runtime as kars

MAX_ROUNDS = 8


def schema(fn):
    """The tool definition Anthropic expects, from the function's signature
    and docstring."""
    params = inspect.signature(fn).parameters
    doc = (fn.__doc__ or "").strip()
    return {"name": fn.__name__, "description": doc.splitlines()[0] if doc else fn.__name__,
            "input_schema": {"type": "object", "properties": {p: {"type": "string"} for p in params},
                             "required": list(params)}}


def make_adapter(cfg: kars.Config):
    client = anthropic.AsyncAnthropic(max_retries=0)  # ANTHROPIC_BASE_URL and the placeholder key come from the contract
    fns = {f.__name__: f for f in kars.tools(cfg)}
    defs = [schema(f) for f in fns.values()]

    async def turn(state, message):
        messages = list(state or []) + [{"role": "user", "content": message}]
        prompt = completion = 0
        model = cfg.model
        for _ in range(MAX_ROUNDS):
            resp = await client.messages.create(model=cfg.model, max_tokens=1024, system=cfg.instructions,
                                                tools=defs, messages=messages)
            prompt += resp.usage.input_tokens
            completion += resp.usage.output_tokens
            model = resp.model
            messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in resp.content]})
            uses = [b for b in resp.content if b.type == "tool_use"]
            if resp.stop_reason != "tool_use" or not uses:
                reply = "".join(b.text for b in resp.content if b.type == "text")
                return kars.Turn(reply, messages, model, prompt, completion)
            results = []
            for use in uses:
                d = await kars.adecide(cfg, use.name, use.input)
                rec = kars.record(use.id, use.name, use.input, d)
                if not d.allowed:
                    results.append({"type": "tool_result", "tool_use_id": use.id, "content": d.refusal(), "is_error": True})
                    continue
                fn = fns.get(use.name)
                out = kars.run_tool(fn, dict(use.input)) if fn else f"error: no such tool {use.name}"
                rec["result"] = out
                results.append({"type": "tool_result", "tool_use_id": use.id, "content": out,
                                "is_error": out.startswith("error:")})
            messages.append({"role": "user", "content": results})
        raise RuntimeError(f"the model asked for tools {MAX_ROUNDS} times without answering")

    return turn


if __name__ == "__main__":
    kars.serve("anthropic", make_adapter)
