"""Free loopback port blocks for the chain tests (each node needs 4 ports)."""
import random
import socket


def free_port_base(n_nodes: int, span: int = 100) -> int:
    """A base b such that b+k*span+i (k < 4, i < n_nodes) are all free TCP ports on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - 4 * span)
        socks = []
        try:
            for k in range(4):
                for i in range(n_nodes):
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", base + k * span + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of loopback ports")


def port_kwargs(base: int, span: int = 100) -> dict:
    return {"p2p_port": base, "http_port": base + span, "ws_port": base + 2 * span,
            "authrpc_port": base + 3 * span}
