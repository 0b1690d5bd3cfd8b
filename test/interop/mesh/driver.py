"""Drives the Agent Governance Toolkit's own AgentMesh code for the kars
interop tests: one process is one agent. It reads one JSON command per line
on stdin and answers one JSON line on stdout.

Cryptography is the toolkit's (agentmesh.encryption: X3DHKeyManager,
SecureChannel, DoubleRatchet; PyNaCl for Ed25519). The toolkit ships no
registry or relay *client*, so the HTTP and WebSocket calls here are
written from its registry and relay servers' code (agentmesh.registry.app,
agentmesh.relay.app): the request shapes those servers accept, nothing
kars-specific.
"""

import base64
import hashlib
import json
import queue
import sys
import threading
from datetime import datetime, timezone

import httpx
from nacl.signing import SigningKey
from websockets.sync.client import connect as ws_connect

import agentmesh.encryption.ratchet as ratchet_mod
from agentmesh.encryption.channel import ChannelEstablishment, SecureChannel
from agentmesh.encryption.ratchet import EncryptedMessage, MessageHeader
from agentmesh.encryption.x3dh import (
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    X25519KeyPair,
    X3DHKeyManager,
)


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Agent:
    def __init__(self) -> None:
        self.sk = SigningKey.generate()
        self.pub = bytes(self.sk.verify_key)
        self.did = "did:mesh:" + hashlib.sha256(self.pub).hexdigest()[:32]
        self.km = X3DHKeyManager.from_ed25519_keys(bytes(self.sk) + self.pub, self.pub)
        self.km.generate_signed_pre_key()
        self.km.generate_one_time_pre_keys(5)
        self.channels: dict[str, SecureChannel] = {}
        self.pending_x3dh: dict[str, dict] = {}
        self.ws = None
        self.inbox: "queue.Queue[dict]" = queue.Queue()
        self.http = httpx.Client(timeout=10)

    def auth(self) -> dict:
        ts = now_iso()
        sig = self.sk.sign(ts.encode()).signature
        return {"Authorization": f"Ed25519-Timestamp {self.did} {ts} {b64u(sig)}"}

    # registry (agentmesh.registry.app request shapes)
    def register(self, registry: str) -> dict:
        pk = b64u(self.pub)
        ts = now_iso()
        proof = b64u(self.sk.sign((pk + ts).encode()).signature)
        r = self.http.post(f"{registry}/v1/agents", json={"public_key": pk, "proof": proof, "proof_timestamp": ts, "capabilities": ["interop"]})
        r.raise_for_status()
        got = r.json()["did"]
        assert got == self.did, (got, self.did)
        return {"did": self.did}

    def upload(self, registry: str) -> dict:
        spk = self.km.signed_pre_key
        body = {
            "identity_key": b64u(self.km.identity_key.public_key),
            "identity_key_ed": b64u(self.pub),
            "signed_pre_key": {"key_id": spk.key_id, "public_key": b64u(spk.key_pair.public_key), "signature": b64u(spk.signature)},
            "one_time_pre_keys": [{"key_id": k, "public_key": b64u(o.key_pair.public_key)} for k, o in self.km.one_time_pre_keys.items()],
        }
        r = self.http.put(f"{registry}/v1/agents/{self.did}/prekeys", json=body, headers=self.auth())
        r.raise_for_status()
        return r.json()

    def initiate(self, registry: str, peer: str) -> dict:
        r = self.http.get(f"{registry}/v1/agents/{peer}/prekeys", headers=self.auth())
        r.raise_for_status()
        j = r.json()
        otk = j.get("one_time_pre_key")
        bundle = PreKeyBundle(
            identity_key=unb64u(j["identity_key"]),
            identity_key_ed=unb64u(j["identity_key_ed"]),
            signed_pre_key=unb64u(j["signed_pre_key"]["public_key"]),
            signed_pre_key_signature=unb64u(j["signed_pre_key"]["signature"]),
            signed_pre_key_id=j["signed_pre_key"]["key_id"],
            one_time_pre_key=unb64u(otk["public_key"]) if otk else None,
            one_time_pre_key_id=otk["key_id"] if otk else None,
        )
        ch, est = SecureChannel.create_sender(self.km, bundle)
        self.channels[peer] = ch
        self.pending_x3dh[peer] = {
            "identity_key": b64u(est.initiator_identity_key),
            "ephemeral_key": b64u(est.ephemeral_public_key),
            "used_opk_id": est.used_one_time_key_id,
        }
        return {"used_opk_id": est.used_one_time_key_id}

    # relay (agentmesh.relay.app connect proof: top-level, standard base64)
    def connect(self, relay: str) -> dict:
        self.ws = ws_connect(relay)
        ts = now_iso()
        sig = self.sk.sign(ts.encode()).signature
        self.ws.send(json.dumps({"v": 1, "type": "connect", "from": self.did, "public_key": base64.b64encode(self.pub).decode(),
                                 "timestamp": ts, "signature": base64.b64encode(sig).decode()}))
        threading.Thread(target=self._read, daemon=True).start()
        return {"connected": True}

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.inbox.put(json.loads(raw))
        except Exception as e:  # connection closed
            self.inbox.put({"type": "closed", "detail": str(e)})

    def send(self, peer: str, text: str, msg_id: str) -> dict:
        m = self.channels[peer].send(text.encode())
        frame = {
            "v": 1, "type": "message", "from": self.did, "to": peer, "id": msg_id, "ts": now_iso(),
            "header": {"dh": b64u(m.header.dh_public_key), "pn": m.header.previous_chain_length, "n": m.header.message_number},
            "ciphertext": b64u(m.ciphertext),
        }
        if peer in self.pending_x3dh:
            frame["x3dh"] = self.pending_x3dh[peer]
        self.ws.send(json.dumps(frame))
        return {"sent": msg_id}

    def recv(self, timeout: float) -> dict:
        while True:
            f = self.inbox.get(timeout=timeout)
            if f.get("type") != "message":
                if f.get("type") in ("error", "closed"):
                    return {"frame": f}
                continue
            peer = f["from"]
            if peer not in self.channels:
                x = f["x3dh"]
                est = ChannelEstablishment(unb64u(x["identity_key"]), unb64u(x["ephemeral_key"]), x.get("used_opk_id"))
                self.channels[peer] = SecureChannel.create_receiver(self.km, est)
            self.pending_x3dh.pop(peer, None)  # the peer answered
            h = f["header"]
            msg = EncryptedMessage(MessageHeader(unb64u(h["dh"]), h["pn"], h["n"]), unb64u(f["ciphertext"]))
            text = self.channels[peer].receive(msg).decode()
            self.ws.send(json.dumps({"v": 1, "type": "ack", "id": f["id"]}))
            return {"from": peer, "id": f["id"], "text": text}


def check_vectors(path: str) -> dict:
    """Checks kars' published vectors with the toolkit's implementation."""
    from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519
    from nacl.signing import VerifyKey

    v = json.load(open(path))
    h = bytes.fromhex
    for name in ("alice", "bob"):
        p = v[name]
        sk = SigningKey(h(p["ed25519_seed"]))
        assert bytes(sk.verify_key).hex() == p["ed25519_public"], f"{name}: Ed25519 public key"
        assert crypto_sign_ed25519_sk_to_curve25519(bytes(sk) + bytes(sk.verify_key)).hex() == p["x25519_private"], f"{name}: X25519 private (libsodium)"
        assert crypto_sign_ed25519_pk_to_curve25519(bytes(sk.verify_key)).hex() == p["x25519_public"], f"{name}: X25519 public (libsodium)"
        assert "did:mesh:" + hashlib.sha256(bytes(sk.verify_key)).hexdigest()[:32] == p["did_mesh"], f"{name}: DID"
    b = v["bob"]
    VerifyKey(h(b["ed25519_public"])).verify(h(b["signed_pre_key_public"]), h(b["signed_pre_key_signature"]))

    # Bob: the toolkit's key manager holding exactly the recorded keys.
    bob_sk = SigningKey(h(b["ed25519_seed"]))
    km = X3DHKeyManager.from_ed25519_keys(bytes(bob_sk) + bytes(bob_sk.verify_key), bytes(bob_sk.verify_key))
    km.signed_pre_key = SignedPreKey(X25519KeyPair(h(b["signed_pre_key_private"]), h(b["signed_pre_key_public"])), h(b["signed_pre_key_signature"]), 0)
    km.one_time_pre_keys = {b["one_time_pre_key_id"]: OneTimePreKey(X25519KeyPair(h(b["one_time_pre_key_private"]), h(b["one_time_pre_key_public"])), b["one_time_pre_key_id"])}

    feeds = {"alice": list(v["alice"]["ratchet_private_keys"]), "bob": list(v["bob"]["ratchet_private_keys"])}
    current = {"who": "bob"}
    from nacl.bindings import crypto_scalarmult_base

    def feed():
        k = h(feeds[current["who"]].pop(0))
        return k, crypto_scalarmult_base(k)

    ratchet_mod._generate_dh_pair = feed
    first = json.loads(json.dumps(v["frames"][0]["frame"]))
    x = first["x3dh"]
    current["who"] = "bob"
    bob = SecureChannel.create_receiver(km, ChannelEstablishment(unb64u(x["identity_key"]), unb64u(x["ephemeral_key"]), x["used_opk_id"]))
    # Alice: the toolkit's ratchet from the recorded shared secret.
    current["who"] = "alice"
    alice_r = ratchet_mod.DoubleRatchet.init_sender(h(v["x3dh"]["shared_secret"]), h(b["signed_pre_key_public"]))
    ad = h(v["x3dh"]["associated_data"])
    assert bob._associated_data == ad, "associated data"
    checked = 0
    for fv in v["frames"]:
        f = fv["frame"]
        hd = f["header"]
        msg = EncryptedMessage(MessageHeader(unb64u(hd["dh"]), hd["pn"], hd["n"]), unb64u(f["ciphertext"]))
        if fv["direction"] == "alice->bob":
            current["who"] = "bob"
            pt = bob.receive(msg)
        else:
            current["who"] = "alice"
            pt = alice_r.decrypt(msg, ad)
        assert pt.decode() == fv["plaintext"], f"frame {checked}: {pt!r}"
        checked += 1
    return {"frames_checked": checked}


def main() -> None:
    agent = Agent()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "vectors":
                out = check_vectors(cmd["path"])
            elif op == "whoami":
                out = {"did": agent.did}
            else:
                out = getattr(agent, op)(**cmd)
            print(json.dumps({"ok": True, **out}), flush=True)
        except Exception as e:  # report, keep serving
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
