"""Deterministic test records, and byte-for-byte comparison of what was
produced with what was consumed.

The generator mirrors tests/java/E2eClient.java (recordKey/recordValue/
recordHeaders); test_records_match_java checks that the two agree.
"""
from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from typing import Iterable, NamedTuple, Optional


class Rec(NamedTuple):
    """One record as a client saw it. Keys, values and header values are bytes
    (or None); headers keep order and duplicates."""
    p: int
    o: int
    ts: int
    k: Optional[bytes]
    v: Optional[bytes]
    h: tuple  # ((name: str, value: bytes | None), ...)

    def short(self) -> str:
        def s(b):
            if b is None:
                return "None"
            return repr(b[:24]) + ("..." if len(b) > 24 else "")
        return f"p{self.p}@{self.o} ts={self.ts} k={s(self.k)} v={s(self.v)} h={list(self.h)}"


# ------------------------------------------------------------------ generator

def record_key(seed: int, i: int) -> Optional[bytes]:
    if i % 13 == 7:
        return None
    return f"key-{seed}-{i}".encode()


def record_value(seed: int, i: int, size: int) -> Optional[bytes]:
    if i % 17 == 5:
        return None
    out = bytearray()
    j = 0
    while len(out) < size:
        out += hashlib.sha256(f"value-{seed}-{i}-{j}".encode()).digest()
        j += 1
    return bytes(out[:size])


def record_headers(seed: int, i: int) -> list:
    if i % 11 == 3:
        return []
    hs = [
        ("idx", str(i).encode()),
        ("dup", f"first-{i}".encode()),
        ("dup", f"second-{i}".encode()),
        ("bin", bytes([i & 0xFF, 0, 0xFF])),
    ]
    if i % 5 == 0:
        hs.append(("nullh", None))
    return hs


# ------------------------------------------------------------------ decoding

def _b64(s):
    return None if s is None else base64.b64decode(s)


def rec_from_json(d: dict) -> Rec:
    """A {"t":"rec",...} line of the Java client."""
    return Rec(d["p"], d["o"], d["ts"], _b64(d["k"]), _b64(d["v"]),
               tuple((name, _b64(val)) for name, val in d["h"]))


def rec_from_rdkafka(msg) -> Rec:
    _tstype, ts = msg.timestamp()
    return Rec(msg.partition(), msg.offset(), ts, msg.key(), msg.value(),
               tuple((name, val) for name, val in (msg.headers() or [])))


def digest(recs: Iterable[Rec]) -> str:
    """The Java client's summary digest: SHA-256 over the records sorted by
    (partition, offset), one compact JSON array per line."""
    import json
    def b(x):
        return None if x is None else base64.b64encode(x).decode()
    lines = []
    for r in sorted(recs, key=lambda r: (r.p, r.o)):
        lines.append(json.dumps([r.p, r.o, r.ts, b(r.k), b(r.v), [[n, b(v)] for n, v in r.h]],
                                separators=(",", ":")) + "\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------ checks

def check_produce_order(produced: Iterable[Rec], label: str = "produced") -> None:
    """Records listed in send order: offsets must increase within each partition."""
    last = {}
    for r in produced:
        if r.p in last:
            assert r.o > last[r.p], f"{label}: partition {r.p} offsets not in send order ({last[r.p]} then {r.o})"
        last[r.p] = r.o


def check_consume_order(consumed: Iterable[Rec], label: str = "consumed") -> None:
    """Records in delivery order: each partition must arrive in offset order."""
    last = {}
    for r in consumed:
        if r.p in last:
            assert r.o > last[r.p], f"{label}: partition {r.p} delivered out of order or twice ({last[r.p]} then {r.o})"
        last[r.p] = r.o


def by_partition(recs: Iterable[Rec]) -> dict:
    out = defaultdict(list)
    for r in recs:
        out[r.p].append(r)
    for p in out:
        out[p].sort(key=lambda r: r.o)
    return dict(out)


def assert_same_records(produced, consumed, label: str = "", ignore_ts: bool = False) -> None:
    """Consumed must be exactly the produced records: same partitions, offsets,
    timestamps, keys, values and headers (order and duplicates included), no
    record missing, none extra, none twice.

    ignore_ts: for producers whose batches may have been retried. When the
    broker recognises an idempotent retry as a duplicate it answers with
    log_append_time = the batch's max timestamp (even on CreateTime topics), and
    the clients then report that instead of each record's own timestamp."""
    produced = list(produced)
    consumed = list(consumed)
    if ignore_ts:
        produced = [r._replace(ts=0) for r in produced]
        consumed = [r._replace(ts=0) for r in consumed]
    prefix = f"{label}: " if label else ""
    seen = set()
    dups = []
    for r in consumed:
        if (r.p, r.o) in seen:
            dups.append((r.p, r.o))
        seen.add((r.p, r.o))
    assert not dups, f"{prefix}{len(dups)} record(s) consumed twice, e.g. {dups[:5]}"
    want = by_partition(produced)
    got = by_partition(consumed)
    problems = []
    for p in sorted(set(want) | set(got)):
        w = {r.o: r for r in want.get(p, [])}
        g = {r.o: r for r in got.get(p, [])}
        missing = sorted(set(w) - set(g))
        extra = sorted(set(g) - set(w))
        if missing:
            problems.append(f"partition {p}: {len(missing)} produced record(s) not consumed, offsets {missing[:10]}")
        if extra:
            problems.append(f"partition {p}: {len(extra)} unexpected record(s), offsets {extra[:10]}; first: {g[extra[0]].short()}")
        for o in sorted(set(w) & set(g)):
            if w[o] != g[o]:
                problems.append(f"partition {p} offset {o} differs:\n    produced {w[o].short()}\n    consumed {g[o].short()}")
                break
    assert not problems, prefix + f"{len(produced)} produced, {len(consumed)} consumed\n  " + "\n  ".join(problems[:20])
