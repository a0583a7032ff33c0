"""Who gives up a connection slot of :mod:`guestkit_worker.http.server` when every slot is taken
and a newcomer arrives.

Candidates are the connections that are not being answered: those idle in the waiting room
(nothing sent yet, or a kept connection between requests) and those whose request head (TLS
handshake, request line, headers) a thread is still reading.  A request whose head has arrived
whole is never cut.  Slots are shared fairly between client addresses: a newcomer may take the
slot of an idle connection of an address holding at least as many connections as its own, or
the slot of a head being read by an address holding more.  The address holding the most gives
first, an idle connection before a head, the one waiting or reading longest first.

So clients sending their heads slowly from one address can only displace each other and idle
connections: a client from another address always finds a slot while they hold more than it
does, and their own newcomers are refused (503) instead of pushing anyone else's request out.
No age protects a head: a sender that hangs up and comes back before any age is reached gets
no slot that way.
"""

from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable, Optional

__all__ = ["choose_victim"]


def choose_victim(host: str, hosts: Counter, waiting: Mapping[Any, tuple[Any, float]],
                  heads: Mapping[Any, str], host_of: Callable[[Any], str]) -> Optional[tuple[str, Any]]:
    """``("waiting", socket)`` or ``("head", socket)``: the connection that makes room for a
    newcomer from ``host``, or None when the newcomer must be refused.

    ``hosts`` counts open connections per address; ``waiting`` maps the waiting room's sockets
    (oldest first) to ``(item, deadline)``, where ``host_of(item)`` is the owner's address;
    ``heads`` maps the sockets whose head is being read (longest first) to their address.
    """
    mine = hosts[host]
    best, best_rank = None, None
    for sock, (item, _deadline) in waiting.items():
        weight = hosts[host_of(item)]
        if weight >= mine and (best_rank is None or (weight, 1) > best_rank):
            best, best_rank = ("waiting", sock), (weight, 1)
    for sock, owner in heads.items():
        weight = hosts[owner]
        if weight > mine and (best_rank is None or (weight, 0) > best_rank):
            best, best_rank = ("head", sock), (weight, 0)
    return best
