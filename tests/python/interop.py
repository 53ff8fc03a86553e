"""A muster client and a muster service in plain Python with pyzmq,
written from docs/protocol.md alone.

    python3 interop.py call  tcp://127.0.0.1:7700 echo.shout '{"text":"hi","times":2}'
    python3 interop.py serve tcp://127.0.0.1:7700      # serves pyecho.upper
"""

import json
import os
import sys
import threading
import time

import zmq

TAG = b"MUSTER/1"


def control(registry, verb, body, ctx):
    s = ctx.socket(zmq.DEALER)
    s.connect(registry)
    s.send_multipart([TAG, json.dumps({"id": verb, "kind": "control", "method": verb}).encode(),
                      json.dumps(body).encode()])
    if not s.poll(2000):
        raise SystemExit(f"no bus at {registry}")
    tag, header, reply = s.recv_multipart()
    assert tag == TAG and json.loads(header)["id"] == verb
    s.close(0)
    return json.loads(reply)


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
    assert control(registry, "register", record, ctx).get("error") is None

    def heartbeat():
        while True:
            time.sleep(1)
            reply = control(registry, "heartbeat", {"instances": [instance]}, ctx)
            if instance in reply.get("unknown", []):
                control(registry, "register", record, ctx)

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
