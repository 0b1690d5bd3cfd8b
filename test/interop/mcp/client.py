"""Drives kars-router's MCP gateway with the official Python SDK (PyPI mcp).

Usage: client.py URL MODE. It sends the agent's own (placeholder) bearer,
which the router must drop, lists the tools, calls echo (allowed), get-env
(allowlisted, denied by policy) and get-tiny-image (not allowlisted), and
prints one JSON object with what it saw. MODE is the SDK's connect mode:
"auto" (server/discover, the 2026-07-28 revision) or "legacy" (the
initialize handshake).
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def text(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def main(url: str, mode: str) -> None:
    out = {}
    agent_http = httpx2.AsyncClient(headers={"Authorization": "Bearer agent-placeholder-key"})
    async with Client(streamable_http_client(url, http_client=agent_http), mode=mode) as client:
        out["protocol"] = client.session.protocol_version if hasattr(client.session, "protocol_version") else ""
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        r = await client.call_tool("echo", {"message": "hello from python"})
        out["echo"] = {"isError": bool(r.is_error), "text": text(r)}
        r = await client.call_tool("get-env", {})
        out["get-env"] = {"isError": bool(r.is_error), "text": text(r)}
        try:
            r = await client.call_tool("get-tiny-image", {})
            out["get-tiny-image"] = {"isError": bool(r.is_error), "text": text(r)}
        except MCPError as e:
            out["get-tiny-image"] = {"error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
