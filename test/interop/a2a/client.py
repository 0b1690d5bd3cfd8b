"""A foreign A2A agent built on the official Python SDK (a2a-sdk), calling a
kars sandbox through the kars-a2a-gateway.

It signs its own AgentCard with the SDK's signer (EdDSA, the key in the
protected header's jwk), authenticates with a TLS client certificate of the
same key, resolves and verifies the sandbox's signed card with the SDK's
verifier (the key fetched from the card's JWKS and pinned by thumbprint), and
then, over the A2A version asked for: sends a message, runs a task in the
background and gets it, cancels a slow one, streams one and, over 1.0, lists
tasks. It prints one JSON object with what it saw; interop_test.go judges it.
"""

import argparse
import asyncio
import base64
import copy
import hashlib
import json
import ssl
import sys
import uuid

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from google.protobuf.json_format import MessageToDict
from jwt.api_jwk import PyJWK

from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskState,
)
from a2a.utils._jcs import canonicalize
from a2a.utils.signing import InvalidSignaturesError, create_agent_card_signer, create_signature_verifier

CARD_HEADER = "Kars-A2A-Caller-Card"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def signed_caller_card(key_pem: bytes, name: str) -> str:
    """This caller's AgentCard, signed by the SDK, as the header carries it."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(x)}
    card = AgentCard(
        name=name,
        description="a foreign agent on the official A2A Python SDK",
        version="1.3.0",
        supported_interfaces=[AgentInterface(url="https://py.partner.example/a2a", protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="plan", name="plan", description="plans trips", tags=["planning"])],
    )
    signer = create_agent_card_signer(signing_key=key, protected_header={"alg": "EdDSA", "kid": "py-partner", "typ": "JOSE", "jwk": jwk})
    card = signer(card)
    return b64url(json.dumps(MessageToDict(card)).encode())


def rfc7638(jwk: dict) -> str:
    members = {k: jwk[k] for k in ("crv", "kty", "x")}
    return "sha256:" + hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def message(text: str, skill: str) -> Message:
    m = Message(role=Role.ROLE_USER, parts=[Part(text=text)], message_id=str(uuid.uuid4()))
    m.metadata.update({"skill": skill})
    return m


def text_of(parts) -> str:
    return "".join(p.text for p in parts)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the sandbox's public endpoint at the gateway")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--card-key", required=True, help="pinned thumbprint of the sandbox's card key")
    ap.add_argument("--version", choices=["1.0", "0.3"], required=True)
    ap.add_argument("--slow", required=True, help="a message the agent takes seconds to answer")
    ap.add_argument("--skill", default="search.web")
    a = ap.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    with open(a.key, "rb") as f:
        card_header = signed_caller_card(f.read(), "py-partner")
    out: dict = {"version": a.version}
    async with httpx.AsyncClient(verify=ctx, headers={CARD_HEADER: card_header}, timeout=30) as http:
        # The sandbox's card, verified by the SDK against the pinned key.
        jwks = (await http.get(a.url + "/.well-known/jwks.json")).json()
        key = next(k for k in jwks["keys"] if k.get("kid") == a.card_key)
        if rfc7638(key) != a.card_key:
            raise SystemExit(f"the JWKS key's thumbprint {rfc7638(key)} is not the pinned {a.card_key}")

        def key_provider(kid, jku):
            if kid != a.card_key:
                raise jwt.PyJWTError(f"unexpected key {kid}")
            return PyJWK(key)

        verifier = create_signature_verifier(key_provider, ["EdDSA"])
        card = await A2ACardResolver(http, a.url).get_agent_card(signature_verifier=verifier)
        out["cardVerified"] = True
        out["cardName"] = card.name
        tampered = copy.deepcopy(card)
        tampered.skills[0].description += " (and more)"
        try:
            verifier(tampered)
            out["tamperedRefused"] = False
        except InvalidSignaturesError:
            out["tamperedRefused"] = True
        # The 0.3 card's signature, over its own canonical form.
        raw03 = (await http.get(a.url + "/.well-known/agent.json")).json()
        sig = raw03.pop("signatures")[0]
        payload = b64url(canonicalize(raw03).encode())
        jwt.api_jws.PyJWS().decode_complete(f"{sig['protected']}.{payload}.{sig['signature']}", key=PyJWK(key), algorithms=["EdDSA"])
        out["card03Verified"] = True

        if a.version == "0.3":
            keep = [i for i in card.supported_interfaces if i.protocol_version.startswith("0.3")]
            del card.supported_interfaces[:]
            card.supported_interfaces.extend(keep)
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        streamer = ClientFactory(ClientConfig(streaming=True, httpx_client=http)).create(card)

        # Send: a blocking call is answered with the agent's reply.
        async for ev in client.send_message(SendMessageRequest(message=message("hello from python", a.skill))):
            out["send"] = text_of(ev.message.parts) if ev.HasField("message") else "task:" + TaskState.Name(ev.task.status.state)

        # A task in the background, fetched until done.
        bg = SendMessageRequest(message=message("work in the background", a.skill), configuration=SendMessageConfiguration(return_immediately=True))
        task = None
        async for ev in client.send_message(bg):
            task = ev.task
        for _ in range(200):
            task = await client.get_task(GetTaskRequest(id=task.id))
            if task.status.state in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED):
                break
            await asyncio.sleep(0.05)
        out["task"] = {"state": TaskState.Name(task.status.state), "text": "".join(text_of(x.parts) for x in task.artifacts)}

        # Cancel a task the agent is still working on.
        slow = SendMessageRequest(message=message(a.slow, a.skill), configuration=SendMessageConfiguration(return_immediately=True))
        async for ev in client.send_message(slow):
            task = ev.task
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        out["cancel"] = TaskState.Name(canceled.status.state)

        # Stream.
        states, streamed = [], ""
        async for ev in streamer.send_message(SendMessageRequest(message=message("stream to python", a.skill))):
            if ev.HasField("task"):
                states.append(TaskState.Name(ev.task.status.state))
            elif ev.HasField("status_update"):
                states.append(TaskState.Name(ev.status_update.status.state))
            elif ev.HasField("artifact_update"):
                streamed += text_of(ev.artifact_update.artifact.parts)
        out["stream"] = {"states": states, "text": streamed}

        if a.version == "1.0":
            listed = await client.list_tasks(ListTasksRequest())
            out["listed"] = len(listed.tasks)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the Go test shows this to the reader
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
