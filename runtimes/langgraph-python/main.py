"""kars adapter for LangGraph (langgraph + langchain-openai).

The agent is the graph LangGraph's documentation builds: a model node
(ChatOpenAI with the tools bound) and a prebuilt ToolNode, looping until
the model stops asking for tools. Governance is ToolNode's own interceptor,
awrap_tool_call: it asks the router's decide endpoint and, on a refusal,
returns an error ToolMessage instead of executing the tool.

KARS_LANGGRAPH_GRAPH ("module:attr" in the agent code) replaces the graph
with the user's StateGraph builder; its ToolNodes get the same interceptor.
"""

from langchain_core.messages import SystemMessage, ToolMessage, messages_from_dict, messages_to_dict
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import kars_runtime as kars


def make_adapter(cfg: kars.Config):
    async def kars_policy(request, execute):
        call = request.tool_call
        d = await kars.adecide(cfg, call["name"], call.get("args") or {})
        rec = kars.record(call.get("id", ""), call["name"], call.get("args") or {}, d)
        if not d.allowed:
            return ToolMessage(content=d.refusal(), tool_call_id=call["id"], name=call["name"], status="error")
        out = await execute(request)
        if isinstance(out, ToolMessage):
            rec["result"] = str(out.content)
        return out

    llm = ChatOpenAI(model=cfg.model, max_retries=0)  # OPENAI_BASE_URL and the placeholder key come from the contract
    tools = [tool(kars.recorded(t)) for t in kars.tools(cfg)]
    model = llm.bind_tools(tools)

    async def call_model(state: MessagesState):
        return {"messages": [await model.ainvoke([SystemMessage(cfg.instructions), *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", call_model)
    builder.add_node("tools", ToolNode(tools, awrap_tool_call=kars_policy))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    cfg.entrypoint = kars.os.environ.get("KARS_LANGGRAPH_GRAPH", cfg.entrypoint)
    user = kars.load_entrypoint(cfg, "graph")
    if user is not None:
        builder = user
        for spec in builder.nodes.values():
            if isinstance(spec.runnable, ToolNode):
                spec.runnable._awrap_tool_call = kars_policy  # the interceptor ToolNode's constructor sets
    graph = builder.compile()

    async def turn(state, message):
        history = messages_from_dict(state) if state else []
        out = await graph.ainvoke({"messages": [*history, ("user", message)]}, {"recursion_limit": 20})
        msgs = out["messages"]
        prompt = completion = 0
        model_name = cfg.model
        for m in msgs[len(history):]:
            u = getattr(m, "usage_metadata", None)
            if u:
                prompt += u.get("input_tokens", 0)
                completion += u.get("output_tokens", 0)
            model_name = (getattr(m, "response_metadata", None) or {}).get("model_name", model_name)
        return kars.Turn(str(msgs[-1].content), messages_to_dict(msgs), model_name, prompt, completion)

    return turn


if __name__ == "__main__":
    kars.serve("langgraph", make_adapter)
