"""``-object filter-netem``: vmlan's network emulator on a netdev's ports, validated into :class:`NetemConfig`.

    -object filter-netem,id=ID,netdev=ID[,loss=PCT][,delay=MS][,jitter=MS][,duplicate=PCT][,reorder=PCT]
            [,rate=MBIT][,limit=FRAMES][,queue=all|rx|tx][,seed=N]

QEMU has no such filter; the option names and meanings are Linux netem's (tc-netem(8)), the frame of
the object is QEMU's netfilter (``id=``, ``netdev=``, ``queue=``: ``rx`` = frames the netdev's peer
sends into the LAN, ``tx`` = frames toward the peer, ``all`` both, the default). Percentages are
0..100 and times milliseconds, both with decimals allowed (``loss=0.5``, ``delay=2.5``); ``rate`` is in
megabits (10^6 bits) per second; ``limit`` is frames queued per direction (tc's default 1000). Numbers
take no units and no exponents. ``seed=`` (a vmlan extension) makes the random decisions reproducible.

Input is the QemuOpts pairs of the whole ``-object`` text (:func:`vmlan.config.qemuopts.parse_qemuopts`
with ``implied_key="qom-type"``); as with QEMU's objects a repeated key keeps its last value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmlan.config.errors import ConfigError
from vmlan.config.qemuopts import check_id, parse_uint

MAX_DELAY_MS = 3_600_000.0  # an hour: anything longer is a typo, not a network
MAX_RATE_MBIT = 1_000_000.0  # 1 Tbit/s
MAX_LIMIT = 1_000_000
_DECIMAL_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")

_KEYS = frozenset(
    {"qom-type", "id", "netdev", "loss", "delay", "jitter", "duplicate", "reorder", "rate", "limit", "queue", "seed"}
)


@dataclass(frozen=True, slots=True)
class NetemConfig:
    """One ``-object filter-netem``, in the user's units (percent, milliseconds, Mbit/s)."""

    id: str
    netdev: str
    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    rate: float = 0.0
    limit: int = 1000
    queue: str = "all"
    seed: int | None = None

    @property
    def rx(self) -> bool:
        """Frames the netdev's peer sends into the LAN are emulated."""
        return self.queue in ("all", "rx")

    @property
    def tx(self) -> bool:
        """Frames the LAN sends toward the netdev's peer are emulated."""
        return self.queue in ("all", "tx")


def _decimal(key: str, value: str, what: str, hi: float) -> float:
    """A plain decimal 0..hi: digits with an optional fraction, no sign, exponent, unit, inf or nan."""
    if not _DECIMAL_RE.match(value) or float(value) > hi:
        raise ConfigError(f"Parameter '{key}' expects {what} 0..{hi:.0f} (got '{value}')")
    return float(value)


def parse_filter_netem(pairs: list[tuple[str, str]]) -> NetemConfig:
    """Validate the QemuOpts pairs of ``-object filter-netem,...``; every error is one ConfigError line."""
    opts = dict(pairs)
    kind = opts.get("qom-type", "filter-netem")
    if kind != "filter-netem":
        raise ConfigError(f"Parameter 'qom-type' does not accept value '{kind}' (expected filter-netem)")
    for key, _ in pairs:
        if key not in _KEYS:
            raise ConfigError(f"Property 'filter-netem.{key}' not found")
    for key in ("id", "netdev"):
        if key not in opts:
            raise ConfigError(f"Parameter '{key}' is missing")
    ident = check_id(opts["id"], "object")
    pct = {key: _decimal(key, opts[key], "a percentage", 100.0) for key in ("loss", "duplicate", "reorder")
           if key in opts}
    ms = {key: _decimal(key, opts[key], "milliseconds", MAX_DELAY_MS) for key in ("delay", "jitter") if key in opts}
    rate = _decimal("rate", opts["rate"], "megabits per second", MAX_RATE_MBIT) if "rate" in opts else 0.0
    limit = parse_uint("limit", opts["limit"], 1, MAX_LIMIT) if "limit" in opts else 1000
    queue = opts.get("queue", "all")
    if queue not in ("all", "rx", "tx"):
        raise ConfigError(f"Parameter 'queue' does not accept value '{queue}' (expected all, rx or tx)")
    seed = parse_uint("seed", opts["seed"], 0, 2**64 - 1) if "seed" in opts else None
    delay = ms.get("delay", 0.0)
    reorder = pct.get("reorder", 0.0)
    if reorder and not delay:
        with_delay = f" with 'delay={opts['delay']}'" if "delay" in opts else " and no delay"
        got = f"'reorder={opts['reorder']}'{with_delay}"
        raise ConfigError(
            f"Parameter 'reorder' needs delay > 0 (got {got}): as with tc-netem, reordered frames are the ones "
            "sent without the delay"
        )
    return NetemConfig(
        ident,
        opts["netdev"],
        loss=pct.get("loss", 0.0),
        delay=delay,
        jitter=ms.get("jitter", 0.0),
        duplicate=pct.get("duplicate", 0.0),
        reorder=reorder,
        rate=rate,
        limit=limit,
        queue=queue,
        seed=seed,
    )
