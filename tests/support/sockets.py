"""Look at the server's own end of a TCP connection from the test process (Linux).

The server runs in another process, so a socket option it set can only be
read on its file descriptor: find the descriptor by the connection's ports in
/proc, copy it into this process with pidfd_getfd(2), and ask the kernel.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time

#: pidfd_getfd(2): the same number on every architecture Linux has (the generic table).
SYS_PIDFD_GETFD = 438


def server_socket_option(pid: int, server_port: int, client_port: int, level: int, option: int):
    """getsockopt() on the server's accepted socket for the client at C{client_port}."""
    inode = _socket_inode(pid, server_port, client_port)
    target = _fd_of_inode(pid, inode)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=fd) as copy:
        return copy.getsockopt(level, option)


def _socket_inode(pid: int, local_port: int, remote_port: int) -> str:
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == local_port
                    and int(remote.rsplit(":", 1)[1], 16) == remote_port
                ):
                    return inode
    raise LookupError(f"no connection {local_port} <- {remote_port} in process {pid}")


def _fd_of_inode(pid: int, inode: str) -> int:
    wanted = f"socket:[{inode}]"
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == wanted:
                return int(name)
        except OSError:
            continue
    raise LookupError(f"process {pid} has no descriptor for socket {inode}")


def nodelay_soon(pid: int, port: int, client_port: int) -> int | None:
    """TCP_NODELAY on the server's end of a connection, once the server has set it."""
    deadline = time.monotonic() + 5
    while True:
        try:
            nodelay = server_socket_option(
                pid, port, client_port, socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
        except LookupError:
            nodelay = None
        if nodelay == 1 or time.monotonic() > deadline:
            return nodelay
        time.sleep(0.05)
