"""The network worker: Cricket's CNI plugins, run in-process for cricketd.

pyroute2, which the plugins use for netlink, costs some 20 MB once imported:
too much to carry in cricketd (whose idle memory is measured) or in the
zygote (every shim would map it). So cricketd starts this process when a pod
first needs a network, sends it one plugin call per request, and the worker
goes away when idle. No interpreter is started per plugin call.

Requests and answers are frames (frames/framing.py) of JSON:
{"kind", "command", "conf", "env": {container_id, netns, ifname, path, args}} ->
{"result": ...} or {"error": {"code", "msg", "details"}}.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading

from cni import invoke
from cni.spec import IO_FAILURE, CniError
from frames import channel
from linux import libc
from linux.crash_points import crash_point

IDLE_SECONDS = 120.0


def handle(request: dict) -> dict:
    try:
        env = invoke.Env(**request["env"])
        return {"result": invoke.call_own(request["kind"], request["conf"], env)}
    except CniError as e:
        return {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
    except Exception as e:  # one failing call must not end the worker
        return {"error": {"code": IO_FAILURE, "msg": f"{request.get('kind')} failed", "details": repr(e)}}


def _serve_one(conn: socket.socket, busy: list[int], lock: threading.Lock) -> None:
    with conn:
        try:
            request = json.loads(channel.read_frame_blocking(conn))
            answer = handle(request)
            crash_point("cni_worker.after_plugin")  # armed: the plugin's work is done, its answer not sent
            channel.write_frame_blocking(conn, json.dumps(answer).encode())
        except (OSError, ValueError):
            pass
    with lock:
        busy[0] -= 1


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    tmp = path + ".new"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    with channel.reachable(tmp) as name:
        listener.bind(name)
    listener.listen(socket.SOMAXCONN)  # a burst of pods connects at once
    os.replace(tmp, path)  # appears only once it takes connections
    inode = os.stat(path).st_ino
    listener.settimeout(IDLE_SECONDS)
    busy, lock = [0], threading.Lock()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            with lock:
                if busy[0] == 0:
                    break
            continue
        with lock:
            busy[0] += 1
        threading.Thread(target=_serve_one, args=(conn, busy, lock), daemon=True).start()
    # Leave before anyone else can connect: a caller that finds no socket starts a new worker.
    try:
        if os.stat(path).st_ino == inode:  # not a newer worker's
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener.close()


def main() -> int:
    libc.set_name("cricket-net")
    parent = os.getppid()
    # cricketd's helper, not a lasting service. It dies at once, even in the middle of a plugin
    # call: the next cricketd runs DEL from the intent cricketd cached before ADD (cni/runtime.py),
    # and a worker finishing an ADD meanwhile could undo that DEL's work.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return 0  # cricketd went before the line above took effect
    os.setsid()
    serve(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
