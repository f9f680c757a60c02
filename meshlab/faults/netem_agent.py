"""The userspace netem: ``python -m meshlab.faults.netem_agent --queue N [options]``.

Started by ``network-delay`` (:mod:`meshlab.faults.network_delay`) inside the target's network
namespace when the kernel has no ``sch_netem``. iptables sends the fault's packets to NFQUEUE
``N`` (``--queue-bypass``: if this agent is gone, packets pass unharmed rather than vanish);
the agent binds the queue with NetfilterQueue (libnetfilter_queue) and gives each packet the
verdict netem would:

- **loss** (``--loss-pct``): dropped;
- **corrupt** (``--corrupt-pct``): one random bit of the payload after the IP header flipped,
  so the receiver's checksum fails (netem flips a bit of the packet too);
- **duplicate** (``--duplicate-pct``): a copy is sent through a raw socket (``IP_HDRINCL``,
  marked with :data:`SKIP_MARK` so the rules let it through) and the original goes on;
- **delay** (``--delay-ms``, ``--jitter-ms``, ``--distribution normal|uniform``,
  ``--correlation-pct``): held and accepted at ``arrival + delay``; released in time order, so,
  as with netem's tfifo, a packet that drew a shorter delay may overtake an earlier one;
- **reorder** (``--reorder-pct``): released at once, ahead of the held ones (netem's
  ``reorder``: those packets skip the delay).

Random draws follow netem's correlated generator: ``next = (1 - ρ) · uniform + ρ · last``
(``--correlation-pct`` ρ, applied to the delay draw and each probability's draw).

The agent prints ``ready`` on stdout once the queue is bound, and on SIGTERM (the revert)
accepts every held packet and exits 0. It counts packets and prints a JSON summary line on
exit (``seen``, ``dropped``, ``duplicated``, ``corrupted``, ``reordered``, ``cpu_s``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import resource
import select
import signal
import socket
import sys
import time
from typing import Any

#: The mark on duplicated packets (``iptables -m mark ! --mark``) so they skip the queue.
SKIP_MARK = 0x4D4C


class Correlated:
    """netem's correlated uniform draws in [0, 1): ``(1 - rho) * u + rho * last``."""

    def __init__(self, rng: random.Random, rho: float) -> None:
        self.rng, self.rho, self.last = rng, rho, rng.random()

    def __call__(self) -> float:
        self.last = (1 - self.rho) * self.rng.random() + self.rho * self.last
        return self.last


class Netem:
    """The verdict policy (sans-IO: tested without a queue).

    Args:
        delay_ms: mean added delay.
        jitter_ms: spread: the standard deviation (normal) or half-width (uniform).
        distribution: ``normal`` or ``uniform``.
        correlation_pct: netem's correlation of successive draws, 0-100.
        loss_pct, duplicate_pct, corrupt_pct, reorder_pct: chances per packet, 0-100.
        seed: the random seed (None: from the OS).
    """

    def __init__(self, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 distribution: str = "normal", correlation_pct: float = 0.0,
                 loss_pct: float = 0.0, duplicate_pct: float = 0.0, corrupt_pct: float = 0.0,
                 reorder_pct: float = 0.0, seed: int | None = None) -> None:
        rng = random.Random(seed)
        rho = correlation_pct / 100
        self.delay_s, self.jitter_s = delay_ms / 1000, jitter_ms / 1000
        self.distribution = distribution
        self.draw_delay, self.draw_loss = Correlated(rng, rho), Correlated(rng, rho)
        self.draw_dup, self.draw_corrupt = Correlated(rng, rho), Correlated(rng, rho)
        self.draw_reorder = Correlated(rng, rho)
        self.p = {"loss": loss_pct / 100, "duplicate": duplicate_pct / 100,
                  "corrupt": corrupt_pct / 100, "reorder": reorder_pct / 100}

    def delay(self) -> float:
        """One packet's delay in seconds (never negative)."""
        if self.jitter_s <= 0:
            return self.delay_s
        u = min(max(self.draw_delay(), 1e-12), 1 - 1e-12)
        if self.distribution == "uniform":
            d = self.delay_s + self.jitter_s * (2 * u - 1)
        else:  # inverse normal CDF of the correlated uniform draw
            d = self.delay_s + self.jitter_s * _probit(u)
        return max(0.0, d)

    def happens(self, what: str) -> bool:
        """Whether ``loss``/``duplicate``/``corrupt``/``reorder`` hits this packet."""
        p = self.p[what]
        if p <= 0:
            return False
        draw = {"loss": self.draw_loss, "duplicate": self.draw_dup,
                "corrupt": self.draw_corrupt, "reorder": self.draw_reorder}[what]
        return draw() < p


def _probit(u: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
         3.754408661907416e+00)
    if u < 0.02425:
        q = math.sqrt(-2 * math.log(u))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if u > 1 - 0.02425:
        return -_probit(1 - u)
    q = u - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def _corrupt(payload: bytes, rng: random.Random) -> bytes:
    """Flip one random bit after the IPv4 header (so routing still delivers it)."""
    ihl = (payload[0] & 0x0F) * 4 if payload else 0
    if len(payload) <= ihl:
        return payload
    data = bytearray(payload)
    i = rng.randrange(ihl, len(data))
    data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


class Agent:
    """Binds the queue and runs the verdict loop (see the module docstring)."""

    def __init__(self, queue: int, netem: Netem, max_len: int = 10000) -> None:
        from netfilterqueue import NetfilterQueue

        self.netem = netem
        self.rng = random.Random()
        self.held: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.counts = {"seen": 0, "dropped": 0, "duplicated": 0, "corrupted": 0,
                       "reordered": 0}
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SKIP_MARK)
        self.nfq = NetfilterQueue()
        self.nfq.bind(queue, self._on_packet, max_len=max_len)
        self.stopping = False

    def _on_packet(self, pkt: Any) -> None:
        now = time.monotonic()
        self.counts["seen"] += 1
        n = self.netem
        if n.happens("loss"):
            self.counts["dropped"] += 1
            pkt.drop()
            return
        if n.happens("corrupt"):
            pkt.set_payload(_corrupt(pkt.get_payload(), self.rng))
            self.counts["corrupted"] += 1
        if n.happens("duplicate"):
            payload = pkt.get_payload()
            try:
                self.raw.sendto(payload, (socket.inet_ntoa(payload[16:20]), 0))
                self.counts["duplicated"] += 1
            except OSError:
                pass
        if n.happens("reorder") or (delay := n.delay()) <= 0:
            self.counts["reordered"] += n.p["reorder"] > 0
            pkt.accept()
            return
        pkt.retain()
        self.seq += 1
        heapq.heappush(self.held, (now + delay, self.seq, pkt))

    def _release_due(self) -> float | None:
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            heapq.heappop(self.held)[2].accept()
        return self.held[0][0] - now if self.held else None

    def run(self) -> None:
        """Serve until SIGTERM, then accept what is held."""
        poller = select.poll()
        poller.register(self.nfq.get_fd(), select.POLLIN)
        print("ready", flush=True)
        while not self.stopping:
            wait_s = self._release_due()
            if wait_s is None:
                timeout_ms = 200
            elif wait_s >= 0.0015:
                timeout_ms = int(wait_s * 1000) - 1  # wake just before the next release
            else:
                timeout_ms = 0
            if poller.poll(timeout_ms):
                self.nfq.run(block=False)
            elif wait_s is not None and wait_s < 0.0015:
                time.sleep(min(wait_s, 0.0002))  # the last stretch, still polling the queue
        while self.held:
            heapq.heappop(self.held)[2].accept()
        self.nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring); exit 0 after SIGTERM, 2 on bad arguments."""
    p = argparse.ArgumentParser(prog="meshlab.faults.netem_agent")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--id", default="", help="the fault's id (to find this process)")
    for name in ("delay-ms", "jitter-ms", "correlation-pct", "loss-pct", "duplicate-pct",
                 "corrupt-pct", "reorder-pct"):
        p.add_argument(f"--{name}", type=float, default=0.0)
    p.add_argument("--distribution", choices=("normal", "uniform"), default="normal")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    netem = Netem(args.delay_ms, args.jitter_ms, args.distribution, args.correlation_pct,
                  args.loss_pct, args.duplicate_pct, args.corrupt_pct, args.reorder_pct,
                  args.seed)
    agent = Agent(args.queue, netem)

    def stop(*_: Any) -> None:
        agent.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**agent.counts, "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
