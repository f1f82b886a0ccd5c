#!/usr/bin/env python3
"""Writes the seed corpus from the codec's own test vectors.

decode: every byte-vector literal in the `#[cfg(test)]` code of src/mqtt/ (codec.rs and
packet/*.rs), as `[limit selector 0, split lo, split hi] + bytes`, once on its own and once
after a v5 and a 3.1.1 CONNECT (so that the server codec gets past its first packet), with the
split in the middle of the vector.
topic / session: the topic names and filters quoted in src/mqtt/topic.rs tests and the decode
seeds, as raw bytes: `arbitrary` reads structure out of any bytes, the seeds just start it off.

Run from fuzz/: python3 gen_corpus.py  (rewrites corpus/*/seed-*)
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent
SRC = ROOT.parent / "src" / "mqtt"
TOKEN = r"(?:0x[0-9A-Fa-f]{1,2}|b'(?:\\.|[^'\\])'|\d{1,3})"
VECTOR = re.compile(r"\[\s*(" + TOKEN + r"(?:\s*,\s*" + TOKEN + r")*)\s*,?\s*\]")
CONNECT_V5 = bytes([0x10, 0x0D, 0x00, 0x04]) + b"MQTT" + bytes([0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x00])
CONNECT_V311 = bytes([0x10, 0x0C, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])


def byte(tok):
    if tok.startswith("0x"):
        return int(tok, 16)
    if tok.startswith("b'"):
        inner = tok[2:-1]
        return ord(inner.encode().decode("unicode_escape"))
    return int(tok)


def vectors(path):
    text = path.read_text()
    start = text.find("#[cfg(test)]")
    if start < 0:
        return []
    text = re.sub(r"//[^\n]*", "", text[start:])
    out = []
    for m in VECTOR.finditer(text):
        toks = re.findall(TOKEN, m.group(1))
        vals = [byte(t) for t in toks]
        if len(vals) >= 2 and all(v < 256 for v in vals):
            out.append(bytes(vals))
    return out


def write(target, name, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def main():
    for d in (ROOT / "corpus").glob("*/seed-*"):
        d.unlink()
    files = [SRC / "codec.rs"] + sorted((SRC / "packet").glob("*.rs"))
    seen = set()
    n = 0
    for f in files:
        for v in vectors(f):
            if v in seen:
                continue
            seen.add(v)
            half = len(v) // 2
            for prefix, tag in ((b"", "alone"), (CONNECT_V5, "v5"), (CONNECT_V311, "v311")):
                stream = prefix + v
                split = len(prefix) + half
                write("decode", f"{f.stem}-{n:03}-{tag}", bytes([0, split & 0xFF, split >> 8]) + stream)
            write("session", f"{f.stem}-{n:03}", v)
            n += 1
    topic_text = (SRC / "topic.rs").read_text()
    strings = sorted(set(re.findall(r'"((?:[^"\\]|\\.)*)"', topic_text[topic_text.find("mod tests"):])))
    for i, s in enumerate(strings):
        write("topic", f"{i:03}", s.encode())
    for i in range(0, len(strings) - 1, 2):
        write("topic", f"pair-{i:03}", b"\x08" + strings[i].encode() + b"\x08" + strings[i + 1].encode())
    print(f"{n} vectors from {len(files)} files; {len(strings)} topic strings")


if __name__ == "__main__":
    main()
