"""A muster client and a muster service in plain Python with pyzmq,
written from docs/protocol.md alone.

    python3 interop.py call  tcp://127.0.0.1:7700 echo.shout '{"text":"hi","times":2}'
    python3 interop.py serve tcp://127.0.0.1:7700      # serves pyecho.upper

The service shows the bus a credential ("Registry authentication"): from
MUSTER_CREDENTIAL, the file MUSTER_CREDENTIAL_FILE names, or
.muster/bus.secret in the working directory.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
import time

import zmq

TAG = b"MUSTER/1"


def load_credential():
    """(key id, secret) or None."""
    text = os.environ.get("MUSTER_CREDENTIAL")
    if not text:
        path = os.environ.get("MUSTER_CREDENTIAL_FILE") or os.path.join(".muster", "bus.secret")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            text = f.read()
    words = text.split()
    if len(words) == 1:  # the bus's master secret itself
        return ("bus", bytes.fromhex(words[0]))
    return (words[0], bytes.fromhex(words[1]))


def mac(secret, parts):
    """HMAC-SHA256 over parts, each preceded by its length (8 bytes, big-endian)."""
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


class Registry:
    """One DEALER to the registry: a session (hello) and signed verbs."""

    def __init__(self, endpoint, ctx):
        self.endpoint = endpoint
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.connect(endpoint)
        self.credential = load_credential()
        self.nonce = None
        self.n = 0
        self.lock = threading.Lock()

    def _send(self, verb, body, auth):
        self.n += 1
        header = {"id": f"py{self.n}", "kind": "control", "method": verb}
        payload = json.dumps(body).encode()
        if auth:
            key, secret = self.credential
            header["auth"] = key + " " + mac(secret, [b"muster-registry", self.nonce.encode(),
                                                      header["id"].encode(), verb.encode(), payload])
        self.socket.send_multipart([TAG, json.dumps(header).encode(), payload])
        if not self.socket.poll(2000):
            raise SystemExit(f"no bus at {self.endpoint}")
        tag, rh, reply = self.socket.recv_multipart()
        assert tag == TAG and json.loads(rh)["id"] == header["id"]
        return json.loads(reply)

    def call(self, verb, body):
        with self.lock:
            auth = self.credential is not None and verb not in ("hello", "list")
            if auth and self.nonce is None:
                self.nonce = self._send("hello", {}, False)["nonce"]
            reply = self._send(verb, body, auth)
            if auth and reply.get("unauthorized") == "nonce":  # the bus restarted
                self.nonce = self._send("hello", {}, False)["nonce"]
                reply = self._send(verb, body, auth)
            return reply


def control(registry, verb, body, ctx):
    return Registry(registry, ctx).call(verb, body)


def call(registry, target, params):
    ctx = zmq.Context.instance()
    service, method = target.split(".", 1)
    instances = control(registry, "list", {}, ctx)["instances"]
    mine = [i for i in instances if i["service"] == service
            and (method.startswith("$") or any(m["name"] == method for m in i["methods"]))]
    if not mine:
        print(json.dumps({"code": -32601, "message": f"method not found: {target}"}))
        return 1
    s = ctx.socket(zmq.DEALER)
    s.connect(mine[0]["endpoint"])
    header = {"id": "py-1", "kind": "request", "service": service, "method": method, "deadline_ms": 5000}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    s.send_multipart([TAG, json.dumps(header).encode(), json.dumps(body).encode()])
    if not s.poll(5000):
        print(json.dumps({"code": -32000, "message": "timeout"}))
        return 1
    tag, rh, rb = s.recv_multipart()
    assert tag == TAG and json.loads(rh)["id"] == "py-1", (tag, rh)
    reply = json.loads(rb)
    if "error" in reply:
        print(json.dumps(reply["error"]))
        return 1
    print(json.dumps(reply["result"]))
    return 0


def serve(registry):
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    instance = f"pyecho-{os.getpid()}"
    record = {
        "service": "pyecho", "instance": instance, "version": "1.0.0",
        "endpoint": f"tcp://127.0.0.1:{port}", "pid": os.getpid(),
        "methods": [{"name": "upper", "params": {"type": "string"}, "result": {"type": "string"}}],
        "subscriptions": [],
    }
    bus = Registry(registry, ctx)
    reply = bus.call("register", record)
    assert reply.get("error") is None, reply

    def heartbeat():
        while True:
            time.sleep(1)
            reply = bus.call("heartbeat", {"instances": [instance]})
            if instance in reply.get("unknown", []):
                bus.call("register", record)

    threading.Thread(target=heartbeat, daemon=True).start()
    print("serving", flush=True)
    while True:
        identity, tag, header, body = router.recv_multipart()
        h = json.loads(header)
        reply_header = json.dumps({"id": h.get("id", ""), "kind": "reply", "instance": instance}).encode()
        try:
            req = json.loads(body)
            if h.get("method") != "upper":
                out = {"jsonrpc": "2.0", "id": req.get("id"),
                       "error": {"code": -32601, "message": f"method not found: pyecho.{h.get('method')}"}}
            elif not isinstance(req.get("params"), str):
                out = {"jsonrpc": "2.0", "id": req.get("id"),
                       "error": {"code": -32602, "message": "invalid params: expected a string", "data": {"path": ""}}}
            else:
                out = {"jsonrpc": "2.0", "id": req.get("id"), "result": req["params"].upper()}
        except ValueError as e:
            out = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": f"parse error: {e}"}}
        router.send_multipart([identity, TAG, reply_header, json.dumps(out).encode()])


if __name__ == "__main__":
    if sys.argv[1] == "call":
        sys.exit(call(sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
    serve(sys.argv[2])
