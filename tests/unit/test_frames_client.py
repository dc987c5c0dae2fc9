"""cricketd's frame client against a server that is slow to accept."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

from frames import channel
from frames.client import call


def test_a_burst_of_calls_past_a_full_backlog_is_answered_whole(tmp_path):
    # A backlog of one, and nobody accepting for a while: most connects meet EAGAIN. Each call
    # must still reach the server once it accepts, not fail with ENOTCONN on its first send.
    path = str(tmp_path / "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    calls = 8

    def serve():
        time.sleep(0.3)
        for _ in range(calls):
            conn, _ = server.accept()
            with conn:
                channel.write_frame_blocking(conn, b"echo " + channel.read_frame_blocking(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def burst():
        return await asyncio.gather(*(call(path, str(i).encode()) for i in range(calls)))

    try:
        answers = asyncio.run(asyncio.wait_for(burst(), 20))
    finally:
        thread.join(5)
        server.close()
    assert answers == [f"echo {i}".encode() for i in range(calls)]
