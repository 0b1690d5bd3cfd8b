"""Drives kars-router with the official OpenAI Python SDK.

Run by interop_test.go with the router's URLs in the environment. Prints
"ok <check>" per passed check and exits non-zero on the first failure.
"""
import os
import sys

import openai

BASE = os.environ["KARS_ROUTER_URL"]          # e.g. http://127.0.0.1:8443
BUDGET_BASE = os.environ["KARS_BUDGET_ROUTER_URL"]
AGENT_KEY = os.environ["KARS_AGENT_KEY"]     # a key the router must drop
# The upstream's credentials, given to this test script only so it can check
# that none of them ever reaches the agent side.
UPSTREAM_SECRETS = os.environ["KARS_UPSTREAM_SECRETS"].split(",")

client = openai.OpenAI(base_url=BASE + "/v1", api_key=AGENT_KEY, max_retries=0)
msgs = lambda text: [{"role": "user", "content": text}]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


r = client.chat.completions.create(model="gpt-4.1", messages=msgs("hello from python"), max_tokens=20)
check("chat", r.choices[0].message.content and r.usage.total_tokens > 0, r)

raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=msgs("#fake:echo-auth"))
blob = raw.text + repr(dict(raw.headers))
check("no-upstream-credential", not any(s in blob for s in UPSTREAM_SECRETS) and "redacted" in raw.text, blob)

# Azure's leading prompt_filter_results chunk has no choices; what must not
# appear is the usage chunk the router requested but the agent did not.
text, usage_chunks = "", 0
for chunk in client.chat.completions.create(model="gpt-4.1", messages=msgs("stream"), stream=True):
    if not chunk.choices and chunk.usage:
        usage_chunks += 1
    for c in chunk.choices:
        text += c.delta.content or ""
check("chat-stream", text.startswith("tok") and usage_chunks == 0, (text, usage_chunks))

usage = None
for chunk in client.chat.completions.create(model="gpt-4.1", messages=msgs("usage"), stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.usage:
        usage = chunk.usage
check("chat-stream-usage", usage is not None and usage.total_tokens > 0, usage)

az = openai.AzureOpenAI(azure_endpoint=BASE, api_key=AGENT_KEY, api_version="2024-10-21", max_retries=0)
r = az.chat.completions.create(model="my-deployment", messages=msgs("azure client"))
check("azure-chat", r.usage.total_tokens > 0, r)

e = client.embeddings.create(model="text-embedding-3-small", input="embed me")
check("embeddings", len(e.data) == 1 and e.usage.prompt_tokens > 0, e)

types = [ev.type for ev in client.responses.create(model="gpt-4.1", input="respond", stream=True)]
check("responses-stream", "response.completed" in types, types)

ids = [m.id for m in client.models.list()]
check("models", "gpt-4.1" in ids and "kars-offline" in ids, ids)

try:
    client.chat.completions.create(model="gpt-4.1", messages=msgs("#fake:hate=high"))
    check("content-filter", False, "no error")
except openai.BadRequestError as err:
    check("content-filter", err.code == "content_filter" and "hate" in err.message, err)

got = []
try:
    for chunk in client.chat.completions.create(model="gpt-4.1", messages=msgs("#fake:midstream-jailbreak"), stream=True):
        got += [c.delta.content for c in chunk.choices if c.delta.content]
    check("midstream-jailbreak", False, "stream was not cut")
except openai.APIError as err:
    check("midstream-jailbreak", len(got) == 2 and "jailbreak" in str(err), (got, err))

small = openai.OpenAI(base_url=BUDGET_BASE + "/v1", api_key=AGENT_KEY, max_retries=0)
small.chat.completions.create(model="gpt-4.1", messages=msgs("spend"))
try:
    small.chat.completions.create(model="gpt-4.1", messages=msgs("overspend"))
    check("budget-429", False, "no error")
except openai.RateLimitError as err:
    check("budget-429", err.code == "kars_budget_daily" and "daily token budget" in err.message, err)

print("python openai", openai.__version__, "all checks passed")
