#!/usr/bin/env python3
"""A second, independent verifier of fetchml audit exports.

Standard library plus one package (`cryptography`, for Ed25519). It follows the
README's "Audit" section, not the Rust code: it exists to check that the
encoding is specified well enough to be re-implemented. It applies the same
checks in the same order as the Rust verifier, so both name the same first
break of a tampered export.

    python3 verify.py --file export.jsonl --public-key ID=HEX [--keys keys.json] [--json]

Exit status: 0 intact, 2 broken, 1 unusable input.
"""

import argparse
import collections
import decimal
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS_ENTRY = bytes(32)
GENESIS_HASH = "0" * 64
SCHEME = 2
HEAD_WINDOW = 1 << 16
MAX_SAFE = (1 << 53) - 1
FORMAT = "fetchml-audit-export"


class Unusable(Exception):
    """The input is not an export at all (not a verdict)."""


# --- encodings ---------------------------------------------------------------


def next_entry(prev, seq, data):
    """entry_n = SHA-256(entry_{n-1} || u64_be(n) || SHA-256(stored bytes))."""
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + hashlib.sha256(data).digest()).digest()


def _float(f):
    """A float as serde_json writes it: the shortest round-trip digits, laid
    out as the README says (the `ryu` crate's layout, exponent always signed)."""
    if f == 0:
        return "-0.0" if str(f).startswith("-") else "0.0"
    sign = "-" if f < 0 else ""
    _, digits, exp = decimal.Decimal(repr(abs(f))).as_tuple()
    digits = list(digits)
    while len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    d = "".join(map(str, digits))
    length = len(d)
    kk = length + exp
    if 0 <= exp and kk <= 16:
        out = d + "0" * exp + ".0"
    elif 0 < kk <= 16:
        out = d[:kk] + "." + d[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + d
    else:
        x = kk - 1
        exponent = "e" + ("+" if x >= 0 else "-") + str(abs(x))
        out = (d if length == 1 else d[0] + "." + d[1:]) + exponent
    return sign + out


def canonical(v):
    """Scheme 1's canonical JSON: keys sorted by code point at every depth, no
    whitespace, strings escaped minimally, numbers as serde_json writes them.
    For the values of a checkpoint body (ASCII keys, strings, integers) this is
    RFC 8785."""
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _float(v)
    return json.dumps(v, ensure_ascii=False)


def envelope_hash(envelope):
    without = {k: x for k, x in envelope.items() if k != "hash"}
    return hashlib.sha256(canonical(without).encode("utf-8")).hexdigest()


# --- the replay --------------------------------------------------------------


class Break(Exception):
    def __init__(self, seq, kind, check, expected, found):
        super().__init__(kind)
        self.d = {"check": check, "expected": str(expected), "found": str(found), "kind": kind, "seq": seq}


def order_break(expected, found, nxt):
    if found + 1 == expected:
        kind, check = "duplicate", "each sequence appears once"
    elif found < expected or nxt == expected:
        kind, check = "reordered", "sequences ascend"
    else:
        kind, check = "gap", "no sequence is missing"
    return Break(expected if kind == "gap" else found, kind, check, expected, found)


CHECKPOINT_FIELDS = {"aggregate_kind", "type", "checkpoint", "signature"}
BODY_TYPES = {"scheme": int, "namespace": str, "seq": int, "head": str, "time": str, "key_id": str}


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class Verifier:
    def __init__(self, namespace, keys, seq, head, trusted):
        self.namespace = namespace
        self.checkpoint_subject = namespace + ".ev.audit.checkpoint"
        self.keys = keys
        self.seq = seq
        self.head = head
        self.from_seq = seq + 1
        self.window = collections.OrderedDict([(seq, head)])
        self.heads = {}
        self.partial = seq > 0
        self.events = 0
        self.checkpoints = 0
        self.last_checkpoint = None
        self.anchored = trusted

    def expected(self):
        return self.seq + 1

    def check(self, seq, subject, data, recorded, nxt):
        if seq != self.expected():
            raise order_break(self.expected(), seq, nxt)
        head = next_entry(self.head, seq, data)
        if recorded is not None and recorded != head.hex():
            raise Break(seq, "chain_mismatch", "global chain entry recomputed from the stored bytes", head.hex(), recorded)
        if subject == self.checkpoint_subject:
            self.check_checkpoint(seq, data)
        else:
            self.check_aggregate(seq, data)
        self.seq, self.head = seq, head
        if len(self.window) == HEAD_WINDOW:
            self.window.popitem(last=False)
        self.window[seq] = head
        self.events += 1

    def check_checkpoint(self, seq, data):
        def brk(kind, check, expected, found):
            return Break(seq, kind, check, expected, found)

        try:
            cp = json.loads(data.decode("utf-8"))
            ok = isinstance(cp, dict) and set(cp) == CHECKPOINT_FIELDS
            body = cp.get("checkpoint") if ok else None
            ok = ok and isinstance(body, dict) and set(body) == set(BODY_TYPES)
            ok = ok and all(
                (is_int(body[k]) and body[k] >= 0) if t is int else isinstance(body[k], str) for k, t in BODY_TYPES.items()
            )
            ok = ok and all(isinstance(cp[k], str) for k in ("aggregate_kind", "type", "signature"))
            ok = ok and cp["aggregate_kind"] == "audit" and cp["type"] == "audit.checkpoint"
        except (UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise brk("checkpoint_malformed", "checkpoint format", "a checkpoint event", "not a checkpoint")
        if body["scheme"] != SCHEME:
            raise brk("unsupported_scheme", "checkpoint scheme", SCHEME, body["scheme"])
        if body["namespace"] != self.namespace:
            raise brk("wrong_namespace", "checkpoint namespace", self.namespace, body["namespace"])
        key = self.keys.get(body["key_id"])
        if key is None:
            raise brk("unknown_key", "checkpoint signed by a trusted key", "one of [%s]" % ", ".join(self.keys), body["key_id"])
        try:
            if body["seq"] > MAX_SAFE:
                raise ValueError("beyond 2^53-1")
            Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(cp["signature"]), canonical(body).encode("utf-8"))
        except (InvalidSignature, ValueError):
            raise brk("bad_signature", "Ed25519 signature of the checkpoint body", "a valid signature by " + body["key_id"], cp["signature"])
        at = self.window.get(body["seq"])
        if at is None:
            oldest = next(iter(self.window))
            raise brk("checkpoint_unverifiable", "checkpoint covers a sequence the replay has seen",
                      "a sequence in %d..=%d" % (oldest, seq - 1), body["seq"])
        if at.hex() != body["head"]:
            raise brk("wrong_head", "global chain head after sequence %d" % body["seq"], at.hex(), body["head"])
        self.checkpoints += 1
        self.anchored = True
        self.last_checkpoint = {
            "covers_seq": body["seq"],
            "head": body["head"],
            "key_id": body["key_id"],
            "seq": seq,
            "time": body["time"],
        }

    def check_aggregate(self, seq, data):
        try:
            env = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise Break(seq, "malformed", "event is JSON", "a JSON object", "invalid JSON: %s" % e)
        fields = [env.get(k) if isinstance(env, dict) else None for k in ("aggregate_id", "prev_hash", "hash")]
        if not all(isinstance(f, str) for f in fields):
            raise Break(seq, "malformed", "event envelope", "an object with string aggregate_id, prev_hash and hash", "missing fields")
        aggregate, prev, stored = fields
        computed = envelope_hash(env)
        if computed != stored:
            raise Break(seq, "altered", "per-aggregate hash of the event (scheme 1)", computed, stored)
        kind = env.get("aggregate_kind")
        key = "%s/%s" % (kind if isinstance(kind, str) else "", aggregate)
        expected = self.heads.get(key)
        if expected is not None and prev != expected:
            raise Break(seq, "unlinked", "prev_hash links to the previous event of " + key, expected, prev)
        if expected is None and not self.partial and prev != GENESIS_HASH:
            raise Break(seq, "unlinked", "first event of %s starts its chain" % key, GENESIS_HASH, prev)
        self.heads[key] = stored

    def verdict(self, broken=None):
        v = {
            "anchored": self.anchored,
            "broken": broken.d if broken else None,
            "checkpoints": self.checkpoints,
            "events": self.events,
            "from_seq": self.from_seq,
            "head": self.head.hex(),
            "intact": broken is None,
            "last_checkpoint": self.last_checkpoint,
            "namespace": self.namespace,
            "verified_to_seq": self.seq,
        }
        v["summary"] = summary(v)
        return v


def summary(v):
    b = v["broken"]
    if b:
        s = "BROKEN at sequence %d: %s (%s): expected %s, found %s; intact up to sequence %d" % (
            b["seq"], b["kind"], b["check"], b["expected"], b["found"], v["verified_to_seq"])
    else:
        s = "intact up to sequence %d, head %s" % (v["verified_to_seq"], v["head"])
    c = v["last_checkpoint"]
    if c:
        s += ", last checkpoint at sequence %d (covering %d) signed by key %s" % (c["seq"], c["covers_seq"], c["key_id"])
    else:
        s += ", no signed checkpoint"
    if not v["anchored"]:
        s += " (start not anchored by a signed checkpoint)"
    return s


# --- the export --------------------------------------------------------------


def parse_line(text):
    """One line as the Rust reader accepts it, or None."""
    try:
        line = json.loads(text)
    except ValueError:
        return None
    if not isinstance(line, dict):
        return None
    kind = line.get("kind")
    if kind == "event":
        ok = is_int(line.get("seq")) and isinstance(line.get("subject"), str) and isinstance(line.get("entry"), str)
        ok = ok and all(line.get(k) is None or isinstance(line.get(k), str) for k in ("data", "data_hex"))
    elif kind == "end":
        ok = is_int(line.get("to_seq")) and is_int(line.get("events")) and isinstance(line.get("head"), str)
    elif kind == "manifest":
        ok = True
    else:
        ok = False
    return line if ok else None


def malformed(seq, why):
    return Break(seq, "malformed", "export line format", "a JSON event line", why)


def verify_export(stream, keys):
    first = stream.readline()
    if not first:
        raise Unusable("empty export")
    m = parse_line(first)
    if m is None or m.get("kind") != "manifest" or m.get("format") != FORMAT or m.get("version") != 1:
        raise Unusable("the first line is not an export manifest of a known version")
    try:
        start = bytes.fromhex(m["start_entry"])
        assert len(start) == 32
        from_seq, to_seq, namespace = max(int(m["from_seq"]), 1), int(m["to_seq"]), m["namespace"]
    except (KeyError, ValueError, TypeError, AssertionError):
        raise Unusable("manifest lacks namespace, from_seq, to_seq or a 64-hex-digit start_entry")
    v = Verifier(namespace, keys, from_seq - 1, start, from_seq == 1 and start == GENESIS_ENTRY)
    lines = (parse_line(t) for t in stream)
    nxt = next(lines, StopIteration)
    end = None
    try:
        while nxt is not StopIteration:
            current, nxt = nxt, next(lines, StopIteration)
            if current is None:
                raise malformed(v.expected(), "not an export line")
            kind = current["kind"]
            if kind == "event":
                data, data_hex = current.get("data"), current.get("data_hex")
                if (data is None) == (data_hex is None):
                    raise malformed(current["seq"], "needs exactly one of data, data_hex")
                if data is not None:
                    raw = data.encode("utf-8", "surrogatepass")
                else:
                    try:
                        raw = bytes.fromhex(data_hex)
                    except ValueError as e:
                        raise malformed(current["seq"], str(e))
                following = nxt["seq"] if isinstance(nxt, dict) and nxt.get("kind") == "event" else None
                v.check(current["seq"], current["subject"], raw, current["entry"], following)
            elif kind == "end":
                end = current["to_seq"]
                break
            else:
                raise malformed(v.expected(), "a second manifest")
    except Break as b:
        return v.verdict(b)
    last = v.expected() - 1
    due = max(end if end is not None else to_seq, to_seq)
    if end is None or last != due:
        return v.verdict(Break(last + 1, "truncated", "the export holds every event up to its end line and manifest",
                               "events up to sequence %d and an end line" % due,
                               "events up to sequence %d%s" % (last, ", no end line" if end is None else "")))
    return v.verdict()


def key_id_of(public):
    return "ed25519-" + hashlib.sha256(public).hexdigest()[:16]


def parse_key(arg):
    ident, _, hexkey = arg.rpartition("=")
    raw = bytes.fromhex(hexkey.strip())
    if len(raw) != 32:
        raise ValueError("a public key is 64 hex digits")
    return (ident or key_id_of(raw)), raw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", required=True)
    p.add_argument("--public-key", action="append", default=[], help="ID=HEX or HEX (repeatable)")
    p.add_argument("--keys", help="the answer of GET /v1/audit/keys")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    keys = {}
    try:
        for arg in a.public_key:
            ident, raw = parse_key(arg)
            keys.setdefault(ident, raw)
        if a.keys:
            with open(a.keys, encoding="utf-8") as f:
                for k in json.load(f)["keys"]:
                    keys.setdefault(k["id"], parse_key(k["public_key"])[1])
    except (ValueError, KeyError, OSError) as e:
        print("verify.py: bad key: %s" % e, file=sys.stderr)
        return 1
    if not keys:
        print("verify.py: name the trusted keys with --public-key or --keys", file=sys.stderr)
        return 1
    try:
        # newline="\n": a line is what ends in \n, as the Rust reader splits.
        with open(a.file, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            verdict = verify_export(f, keys)
    except (Unusable, OSError) as e:
        print("verify.py: %s: %s" % (a.file, e), file=sys.stderr)
        return 1
    print(json.dumps(verdict) if a.json else verdict["summary"])
    return 0 if verdict["intact"] else 2


if __name__ == "__main__":
    sys.exit(main())
