"""kars runtime contract v1 for Python adapter shims (docs/runtime-contract.md).

Every Python shim imports this module for what the contract fixes and the
frameworks do not: the chat endpoint (POST /v1/chat, GET/DELETE
/v1/sessions/{id}, GET /healthz), sessions kept under /sandbox, the router's
decide endpoint, and the default agent's tools (calculator, current_time,
list_files, read_file, write_file). The framework itself - its agent loop,
its model client, its tool hook - stays in the shim.

Standard library only: the shim's environment holds the framework and
nothing of ours.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import functools
import importlib
import inspect
import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Awaitable, Callable

CONTRACT = "v1"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant running in a governed kars sandbox."
MAX_BODY = 1 << 20
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Config:
    """The contract's environment."""

    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        v = env.get("KARS_CONTRACT_VERSION", "")
        if v and v != CONTRACT:
            raise SystemExit(f"KARS_CONTRACT_VERSION={v!r}: this runtime implements contract {CONTRACT}")
        self.router = env.get("KARS_ROUTER_URL", "http://127.0.0.1:8443").rstrip("/")
        self.workspace = Path(env.get("KARS_WORKSPACE", "/sandbox"))
        self.listen = env.get("KARS_AGENT_LISTEN", "127.0.0.1:18789")
        self.instructions = env.get("KARS_INSTRUCTIONS") or DEFAULT_INSTRUCTIONS
        self.tools = [t.strip() for t in env.get("KARS_TOOLS", "").split(",") if t.strip()]
        self.code = env.get("KARS_AGENT_CODE", "")
        self.entrypoint = env.get("KARS_ENTRYPOINT", "")
        # The router maps any model name to the deployment its policy
        # allows; the name only has to be accepted by the SDK.
        self.model = env.get("KARS_MODEL", "default")


class UpstreamError(Exception):
    """A refusal from the router (budget 429, policy 403, ...), passed on
    to the chat client with its status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def upstream_error(exc: BaseException) -> UpstreamError | None:
    """Finds the HTTP status of an SDK error (openai, anthropic, httpx)
    anywhere in the exception's cause chain."""
    seen = 0
    while exc is not None and seen < 10:
        status = getattr(exc, "status_code", None)
        if status is None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int) and 400 <= status < 600:
            msg = getattr(exc, "message", None) or str(exc)
            body = getattr(exc, "body", None)
            if isinstance(body, dict):
                err = body.get("error", body)
                if isinstance(err, dict) and err.get("message"):
                    msg = err["message"]
            return UpstreamError(status, str(msg))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


# --- Governance: every tool call is decided by the router first ----------

_turn_calls: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("kars_turn_calls", default=None)


class Decision:
    def __init__(self, decision: str, reason: str, rule: str = ""):
        self.decision, self.reason, self.rule = decision, reason, rule

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def refusal(self) -> str:
        """The text the model sees in place of the tool's result."""
        return f"error: the kars policy refused this tool call ({self.decision}): {self.reason}"


def decide(cfg: Config, tool: str, args: Any) -> Decision:
    """Asks the router whether the tool may run. Anything but an explicit
    allow - including no answer - denies (fail closed). An MCP tool is
    decided and audited by the router's MCP gateway when it is called, so
    it is not asked about twice."""
    if tool in _mcp_names:
        return Decision("allow", "decided and audited by the router's MCP gateway on tools/call", "mcp-gateway")
    body = json.dumps({"action": "tool:" + tool, "args": args if isinstance(args, dict) else {}}).encode()
    req = urllib.request.Request(cfg.router + "/kars/v1/decide", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read(64 << 10))
    except urllib.error.HTTPError as e:
        return Decision("deny", f"no policy decision: the router answered {e.code}")
    except Exception as e:  # noqa: BLE001 - any failure is a denial
        return Decision("deny", f"no policy decision: {e}")
    d = out.get("decision") if isinstance(out, dict) else None
    if not isinstance(d, str) or not d:
        return Decision("deny", "no policy decision: the router sent none")
    return Decision(d, str(out.get("reason", "")), str(out.get("rule", "")))


async def adecide(cfg: Config, tool: str, args: Any) -> Decision:
    return await asyncio.to_thread(decide, cfg, tool, args)


def record(call_id: str, tool: str, args: Any, d: Decision, result: str | None = None) -> dict[str, Any]:
    """Notes a governed tool call for the turn's toolCalls; returns the
    record so the caller can fill in the result once the tool ran."""
    rec = {"id": call_id or "", "name": tool, "arguments": args if isinstance(args, str) else json.dumps(args),
           "decision": d.decision, "reason": d.reason}
    if result is not None:
        rec["result"] = result
    calls = _turn_calls.get()
    if calls is not None:
        calls.append(rec)
    return rec


# --- The default agent's tools --------------------------------------------

def _arithmetic_runs(s: str) -> list[str]:
    """The runs of arithmetic characters in s that hold a digit."""
    runs = re.split(r"[^0-9+\-*/(). ]", s)
    return [r.strip(" .") for r in runs if any(c.isdigit() for c in r)]


_DATE_OR_VERSION = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d+\.\d+\.\d+")
_MULDIV = re.compile(r"[\d)]\s*[*/]\s*[\d(-]")
_ADDSUB = re.compile(r"[\d)]\s*[+-]\s*[\d(-]")


def calculate(expression: str) -> str:
    """Evaluates + - * / and parentheses. Free text (as the offline model
    sends it, with whatever context a runtime adds before or after the
    user's words - OpenClaw stamps dates and versions) is reduced to one
    arithmetic run: dates and version numbers are skipped, then the first
    run with * or /, else with + or -, else any run that evaluates to a
    finite number."""
    runs = [r for r in _arithmetic_runs(expression) if not _DATE_OR_VERSION.search(r)]
    if not runs:
        raise ValueError(f"no arithmetic expression in {expression!r}")
    ordered = [r for r in runs if _MULDIV.search(r)] + [r for r in runs if not _MULDIV.search(r) and _ADDSUB.search(r)]
    ordered += [r for r in runs if r not in ordered]
    err: Exception | None = None
    for expr in ordered:
        try:
            return _evaluate(expr)
        except (ValueError, ZeroDivisionError) as e:
            err = err or e
    raise err


def _evaluate(expr: str) -> str:
    pos = 0

    def space():
        nonlocal pos
        while pos < len(expr) and expr[pos] == " ":
            pos += 1

    def atom(depth: int) -> float:
        nonlocal pos
        space()
        if pos < len(expr) and expr[pos] == "(":
            if depth > 64:
                raise ValueError("expression nests too deeply")
            pos += 1
            v = total(depth + 1)
            space()
            if pos >= len(expr) or expr[pos] != ")":
                raise ValueError("missing ')'")
            pos += 1
            return v
        if pos < len(expr) and expr[pos] == "-":
            pos += 1
            return -atom(depth + 1)
        start = pos
        while pos < len(expr) and (expr[pos].isdigit() or expr[pos] == "."):
            pos += 1
        if start == pos:
            raise ValueError(f"expected a number at {expr[start:]!r}")
        return float(expr[start:pos])

    def product(depth: int) -> float:
        nonlocal pos
        v = atom(depth)
        while True:
            space()
            if pos >= len(expr) or expr[pos] not in "*/":
                return v
            op = expr[pos]
            pos += 1
            r = atom(depth)
            if op == "*":
                v *= r
            elif r == 0:
                raise ValueError("division by zero")
            else:
                v /= r

    def total(depth: int) -> float:
        nonlocal pos
        v = product(depth)
        while True:
            space()
            if pos >= len(expr) or expr[pos] not in "+-":
                return v
            op = expr[pos]
            pos += 1
            r = product(depth)
            v = v + r if op == "+" else v - r

    v = total(0)
    space()
    if pos != len(expr):
        raise ValueError(f"unexpected {expr[pos:]!r} in {expr!r}")
    return f"{v:.12g}"


def workspace_path(cfg: Config, rel: str) -> Path:
    rel = (rel or "").strip()
    if not rel:
        raise ValueError("a path is required")
    root = cfg.workspace.resolve()
    p = (root / rel.lstrip("/")).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"path {rel!r} leaves the workspace")
    if p.relative_to(root).parts[:1] == (".kars-agent",):
        raise ValueError(f"path {rel!r} is the agent's own state")
    return p


def tools(cfg: Config) -> list[Callable[..., str]]:
    """The default agent's tools as plain typed functions with docstrings,
    the shape every framework turns into a tool schema. None reaches the
    network. KARS_TOOLS (spec.agent.tools) narrows the set."""

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression with + - * / and parentheses.

        Args:
            expression: the expression, e.g. 6*7
        """
        return calculate(expression)

    def current_time() -> str:
        """The current date and time in UTC."""
        return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()

    def list_files() -> str:
        """List the files in the agent's workspace."""
        root = cfg.workspace
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in filenames:
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
        return "\n".join(sorted(out))

    def read_file(path: str) -> str:
        """Read a file from the agent's workspace.

        Args:
            path: path relative to the workspace
        """
        return workspace_path(cfg, path).read_text(errors="replace")[: 64 << 10]

    def write_file(path: str, content: str) -> str:
        """Write a file in the agent's workspace.

        Args:
            path: path relative to the workspace
            content: the text to write
        """
        p = workspace_path(cfg, path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        return f"wrote {len(content.encode())} bytes"

    all_tools = [calculator, current_time, list_files, read_file, write_file]
    if cfg.tools:
        all_tools = [t for t in all_tools if t.__name__ in cfg.tools]
    return all_tools + mcp_tools(cfg)


# --- The sandbox's MCP tools, through the router's MCP gateway -------------
#
# The router serves each MCP server the sandbox may use at /mcp/<server>
# (index at /kars/v1/mcp) and lists only the tools the sandbox may call; it
# decides and audits every tools/call itself. The client below speaks the
# stateless 2026-07-28 revision of MCP over streamable HTTP: one JSON-RPC
# POST per request, the protocol version and client capabilities in _meta.

MCP_PROTOCOL = "2026-07-28"
_mcp_names: set[str] = set()
_PY_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the model sees: mcp__<server>__<tool>, characters OpenAI
    function names do not allow replaced by '_', at most 64 characters."""
    return ("mcp__" + server + "__" + re.sub(r"[^A-Za-z0-9_-]", "_", tool))[:64]


def mcp_request(cfg: Config, path: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One JSON-RPC request to the gateway; returns the result or raises."""
    params = dict(params)
    params["_meta"] = {"io.modelcontextprotocol/protocolVersion": MCP_PROTOCOL,
                       "io.modelcontextprotocol/clientCapabilities": {},
                       "io.modelcontextprotocol/clientInfo": {"name": "kars-runtime-python", "version": CONTRACT}}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": MCP_PROTOCOL, "Mcp-Method": method}
    if "name" in params:
        # 2026-07-28 streamable HTTP mirrors the tool's name in a header.
        headers["Mcp-Name"] = params["name"]
    req = urllib.request.Request(cfg.router + path, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        raw = resp.read(16 << 20).decode()
        if resp.headers.get_content_type() == "text/event-stream":
            datas = [line[5:].strip() for line in raw.splitlines() if line.startswith("data:")]
            raw = datas[-1] if datas else "{}"
    msg = json.loads(raw)
    if "error" in msg:
        raise RuntimeError(msg["error"].get("message", "MCP error"))
    return msg.get("result") or {}


def _mcp_function(cfg: Config, server: str, path: str, tool: dict[str, Any]) -> Callable[..., str] | None:
    """A plain typed function for an MCP tool, built from its input schema,
    in the shape every framework turns into a tool; None when a parameter
    name cannot be a Python parameter."""
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    params, annotations, doc_args = [], {}, []
    for pname in sorted(props, key=lambda n: n not in required):
        if not pname.isidentifier() or pname.startswith("_"):
            return None
        ps = props[pname] if isinstance(props[pname], dict) else {}
        typ = _PY_TYPES.get(ps.get("type"), str)
        if pname in required:
            params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, annotation=typ))
            annotations[pname] = typ
        else:
            params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typ | None))
            annotations[pname] = typ | None
        doc_args.append(f"    {pname}: {ps.get('description') or pname}")
    name, tool_name = mcp_tool_name(server, tool["name"]), tool["name"]

    def call(**kwargs: Any) -> str:
        args = {k: v for k, v in kwargs.items() if v is not None}
        try:
            res = mcp_request(cfg, path, "tools/call", {"name": tool_name, "arguments": args})
        except Exception as e:  # noqa: BLE001 - the model sees the error
            return f"error: {e}"
        text = "".join(c.get("text", "") for c in res.get("content") or [] if c.get("type") == "text")
        if not text and res.get("structuredContent") is not None:
            text = json.dumps(res["structuredContent"])
        return ("error: " + text) if res.get("isError") and not text.startswith("kars policy:") else text

    call.__name__ = call.__qualname__ = name
    call.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    call.__annotations__ = {**annotations, "return": str}
    desc = tool.get("description") or f"Tool {tool_name} of the MCP server {server}"
    call.__doc__ = desc + ("\n\nArgs:\n" + "\n".join(doc_args) if doc_args else "")
    return call


def mcp_tools(cfg: Config, attempts: int = 3) -> list[Callable[..., str]]:
    """The sandbox's MCP tools the gateway shows, as typed functions. A
    server that does not answer yet (it starts with the pod) is asked
    again a few times; a router without servers gives none."""
    try:
        with urllib.request.urlopen(cfg.router + "/kars/v1/mcp", timeout=10) as resp:
            servers = json.loads(resp.read(1 << 20)).get("servers") or []
    except Exception:  # noqa: BLE001 - no gateway, no MCP tools
        return []
    out: list[Callable[..., str]] = []
    for s in servers:
        for attempt in range(attempts):
            try:
                listed = mcp_request(cfg, s["path"], "tools/list", {}).get("tools") or []
                break
            except Exception:  # noqa: BLE001
                listed = []
                if attempt + 1 < attempts:
                    time.sleep(2)
        for t in listed:
            fn = _mcp_function(cfg, s["name"], s["path"], t)
            if fn is not None and fn.__name__ not in _mcp_names:
                _mcp_names.add(fn.__name__)
                out.append(fn)
    return out


def complete(tool: str, result: str) -> None:
    """Fills in the result of the turn's latest allowed call of tool."""
    for rec in reversed(_turn_calls.get() or []):
        if rec["name"] == tool and rec["decision"] == "allow" and "result" not in rec:
            rec["result"] = result
            return


def recorded(fn: Callable[..., str]) -> Callable[..., str]:
    """Wraps a default tool so that its failure becomes the text the model
    sees and its result is noted for the turn; the signature is kept for
    the framework's schema."""

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> str:
        out = run_tool(fn, dict(sig.bind(*a, **kw).arguments))
        complete(fn.__name__, out)
        return out

    return run


def run_tool(fn: Callable[..., str], args: dict[str, Any]) -> str:
    """Runs a default tool, turning its failure into the text the model sees."""
    try:
        return str(fn(**args))
    except Exception as e:  # noqa: BLE001 - the model sees the error
        return f"error: {e}"


def load_entrypoint(cfg: Config, default_attr: str) -> Any | None:
    """Imports the user's agent: KARS_ENTRYPOINT "module:attr" (or a
    module, taking default_attr) from the agent code at KARS_AGENT_CODE.
    None when the sandbox brings no agent code."""
    if not cfg.code and not cfg.entrypoint:
        return None
    if cfg.code:
        sys.path.insert(0, cfg.code)
    module, _, attr = (cfg.entrypoint or "agent").partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr or default_attr)


# --- Sessions ---------------------------------------------------------------

class Sessions:
    """Conversations as JSON files under /sandbox/.kars-agent/sessions, the
    only state that survives a restart. Each holds what the framework
    needs to continue (its own message format) plus a plain transcript."""

    def __init__(self, cfg: Config):
        self.dir = cfg.workspace / ".kars-agent" / "sessions"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._mu = threading.Lock()

    def path(self, sid: str) -> Path:
        if not SESSION_ID.match(sid):
            raise ValueError(f"session id {sid!r}: use 1-64 letters, digits, '-' or '_'")
        return self.dir / (sid + ".json")

    def lock(self, sid: str) -> threading.Lock:
        with self._mu:
            return self._locks.setdefault(sid, threading.Lock())

    def load(self, sid: str) -> dict[str, Any]:
        p = self.path(sid)
        if not p.exists():
            return {"state": None, "transcript": []}
        return json.loads(p.read_text())

    def save(self, sid: str, data: dict[str, Any]) -> None:
        p = self.path(sid)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)

    def delete(self, sid: str) -> None:
        self.path(sid).unlink(missing_ok=True)


# --- The chat endpoint --------------------------------------------------------

class Turn:
    """What a framework adapter returns for one turn."""

    def __init__(self, reply: str, state: Any, model: str = "", prompt_tokens: int = 0, completion_tokens: int = 0):
        self.reply, self.state, self.model = reply, state, model
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens


# An adapter runs one turn: (previous framework state or None, the user's
# message) -> Turn. It runs on the server's event loop.
Adapter = Callable[[Any, str], Awaitable[Turn]]


class Server:
    def __init__(self, cfg: Config, adapter: Adapter, framework: str):
        self.cfg, self.adapter, self.framework = cfg, adapter, framework
        self.sessions = Sessions(cfg)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="kars-agent-loop", daemon=True).start()

    def chat(self, sid: str, message: str) -> dict[str, Any]:
        if not message.strip():
            raise ValueError("empty message")
        with self.sessions.lock(sid):
            data = self.sessions.load(sid)
            calls: list[dict[str, Any]] = []

            async def run():
                _turn_calls.set(calls)
                return await self.adapter(data["state"], message)

            try:
                turn = asyncio.run_coroutine_threadsafe(run(), self.loop).result()
            except Exception as e:  # noqa: BLE001
                up = upstream_error(e)
                if up is not None:
                    raise up from e
                raise
            data["state"] = turn.state
            data["transcript"] += [{"role": "user", "content": message},
                                   {"role": "assistant", "content": turn.reply, "toolCalls": calls}]
            self.sessions.save(sid, data)
        return {"session": sid, "reply": turn.reply, "toolCalls": calls, "model": turn.model,
                "usage": {"promptTokens": turn.prompt_tokens, "completionTokens": turn.completion_tokens}}

    def handler(self):
        server = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet: the router audits
                pass

            def send(self, status: int, body: Any = None):
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def error(self, status: int, msg: str):
                self.send(status, {"error": {"message": msg, "status": status}})

            def do_GET(self):
                if self.path == "/healthz":
                    return self.send(200, {"status": "ok", "contract": CONTRACT, "framework": server.framework})
                if self.path.startswith("/v1/sessions/"):
                    try:
                        data = server.sessions.load(self.path[len("/v1/sessions/"):])
                    except ValueError as e:
                        return self.error(400, str(e))
                    return self.send(200, data["transcript"])
                self.error(404, "not found")

            def do_DELETE(self):
                if self.path.startswith("/v1/sessions/"):
                    try:
                        server.sessions.delete(self.path[len("/v1/sessions/"):])
                    except ValueError as e:
                        return self.error(400, str(e))
                    return self.send(204)
                self.error(404, "not found")

            def do_POST(self):
                if self.path != "/v1/chat":
                    return self.error(404, "not found")
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    return self.error(413, "request body exceeds 1 MiB")
                try:
                    req = json.loads(self.rfile.read(n) or b"null")
                    if not isinstance(req, dict) or not isinstance(req.get("message"), str):
                        raise ValueError('body must be JSON like {"message":"hello"}')
                    out = server.chat(str(req.get("session") or "default"), req["message"])
                except UpstreamError as e:
                    return self.error(e.status, e.message)
                except ValueError as e:
                    return self.error(400, str(e))
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    return self.error(500, f"{type(e).__name__}: {e}")
                self.send(200, out)

        return H

    def serve(self):
        host, _, port = self.cfg.listen.rpartition(":")
        httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), self.handler())
        print(f"kars {self.framework} runtime: contract {CONTRACT}, chat endpoint on {self.cfg.listen}", flush=True)
        httpd.serve_forever()


def serve(framework: str, make_adapter: Callable[[Config], Adapter]) -> None:
    """The shim's main: read the contract, build the adapter, serve."""
    cfg = Config()
    Server(cfg, make_adapter(cfg), framework).serve()
