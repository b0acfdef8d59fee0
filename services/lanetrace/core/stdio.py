"""The caller's standard streams, handed to the spawned target.

``lanetrace run`` starts its target from the injector, whose own output
goes to its log (and, in the daemon, which supervisord starts), so neither
inherits the caller's file descriptors. Reopening
``/dev/stdout`` would give a new open file description with its own offset
(a target and lanetrace writing to ``> log 2>&1`` then overwrite each other),
so the CLI passes its fds 0, 1 and 2 themselves over a Unix socket in the run
directory (SCM_RIGHTS), and the injector installs them as its own 0, 1 and 2
before Frida starts its helper: a target Frida spawns with inherited stdio
then shares the caller's open file descriptions, offsets and all.
"""
from __future__ import annotations

import os
import socket
import threading

STDIO_FDS = (0, 1, 2)
CONNECT_TIMEOUT_S = 30.0


class StdioServer:
    """In the CLI: hands fds 0-2 to every connection on ``path`` (the run
    directory is 0700, so only this user can connect)."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="stdio", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # A terminal on stdin stays ours: the target runs in supervisord's
        # session, where reading the terminal would stop it (SIGTTIN); it
        # reads /dev/null instead, as a daemon would. Pipes and files are
        # passed, and writing to a terminal is fine.
        fds = [fd for fd in STDIO_FDS if _is_open(fd) and not (fd == 0 and os.isatty(fd))]
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    socket.send_fds(conn, [",".join(map(str, fds)).encode()], fds)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def adopt_caller_stdio(path: str) -> list[int]:
    """In the injector: receive the caller's fds and make them our 0, 1, 2.
    Returns the fd numbers installed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        msg, fds, _, _ = socket.recv_fds(sock, 64, len(STDIO_FDS))
    wanted = [int(x) for x in msg.decode().split(",") if x]
    if len(wanted) != len(fds):
        for fd in fds:
            os.close(fd)
        raise OSError(f"expected {len(wanted)} descriptors from {path}, got {len(fds)}")
    for target_fd, fd in zip(wanted, fds):
        os.dup2(fd, target_fd)  # dup2 clears close-on-exec: the target inherits it
        os.close(fd)
    for target_fd in set(STDIO_FDS) - set(wanted):  # not supervisord's pipe
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, target_fd)
        os.close(null)
    return wanted


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
