"""LinkBudget: the link memory a process may hold, shared out among its ports."""

import socket

from vmlan.io.sockopt import LINK_BUFFER, OUT_MAX, OUT_MIN, OUT_TOTAL, LinkBudget


def test_the_output_queue_per_port_shrinks_as_ports_multiply():
    budget = LinkBudget()
    assert budget.out_limit == OUT_MAX
    for _ in range(2):
        budget.join()
    assert budget.out_limit == OUT_MAX  # two ports: 4 MiB each, as before
    for _ in range(62):
        budget.join()
    assert budget.out_limit == OUT_TOTAL // 64 == 1024 * 1024
    for _ in range(936):
        budget.join()
    assert budget.out_limit == OUT_MIN  # 1000 ports: never below two of the largest frames
    assert budget.members * budget.out_limit <= 1000 * OUT_MIN
    for _ in range(999):
        budget.leave()
    assert budget.out_limit == OUT_MAX and budget.members == 1


def test_only_so_many_send_buffers_grow():
    budget = LinkBudget(grown_max=1)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    default = c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert budget.grow_send_buffer(a)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= LINK_BUFFER
    assert not budget.grow_send_buffer(c)
    assert c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == default
    budget.release_grown()
    assert budget.grow_send_buffer(c)
    for s in (a, b, c, d):
        s.close()
