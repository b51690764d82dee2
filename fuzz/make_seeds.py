#!/usr/bin/env python3
"""make_seeds.py -- writes the seed corpora of the fuzz targets into
fuzz/corpus/<target>/ (committed; rerun after changing this file).

Seeds are small, valid (or nearly valid) inputs that reach each target's
interesting paths at once, so 60 s of fuzzing is spent mutating them
rather than rediscovering the formats:

  event        the good and bad examples of schemas/examples/ (<= 2 KiB)
  config       the README's full config, small layouts, the layout JSON
  redis_value  [n_windows, width, key cap] + encoded item/context values
  logfile      [mode, max_line] + text, in each framing (see fuzz_logfile.c)
  client       byte streams a Redis holding a published layout sends back
               to iqp_client_open() + two lookups (see fuzz_client.c)
"""
import gzip
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- varints, as schemas/redis_value.c writes them ---------------------------

def uvarint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def zigzag(v):
    return 2 * v if v >= 0 else -2 * v - 1


def item_value(windows):
    """windows: list of counter lists."""
    out = b""
    for counts in windows:
        mask = sum(1 << k for k, c in enumerate(counts) if c)
        out += uvarint(mask) + b"".join(uvarint(zigzag(c)) for c in counts if c)
    return out


def context_value(counts):
    return b"".join(uvarint(zigzag(c)) for c in counts)


# ---- RESP, as a Redis server answers -----------------------------------------

def bulk(b):
    if b is None:
        return b"$-1\r\n"
    if isinstance(b, str):
        b = b.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def array(elems):
    return b"*%d\r\n" % len(elems) + b"".join(elems)


def event_seeds():
    for kind in ("good", "bad"):
        src = os.path.join(ROOT, "schemas", "examples", kind)
        for name in sorted(os.listdir(src)):
            # the large ones (too_many_items, *_too_long) would raise
            # libFuzzer's max_len for every input; the target's tight
            # limits reach those errors with small inputs
            if name.endswith(".json") and os.path.getsize(os.path.join(src, name)) <= 2048:
                shutil.copyfile(os.path.join(src, name),
                                os.path.join(CORPUS, "event", kind + "_" + name))


SMALL_LAYOUT = {
    "layout_version": 1,
    "actions": ["click"],
    "features": [{"name": "q_item", "context": ["query"], "entity": "item"},
                 {"name": "qc_item", "context": ["query", "country"], "entity": "item"}],
    "windows": [{"name": "1d", "length": 86400000, "granularity": 3600000}],
}
DEFAULT_LAYOUT = {
    "layout_version": 1,
    "actions": ["click", "save", "closeup", "long_click", "download", "screenshot"],
    "features": [{"name": n, "context": c, "entity": "item"} for n, c in (
        ("q_item", ["query"]), ("qc_item", ["query", "country"]), ("qg_item", ["query", "gender"]),
        ("c_item", ["country"]), ("g_item", ["gender"]))],
    "windows": [{"name": n, "length": l, "granularity": g} for n, l, g in (
        ("1d", 86400000, 3600000), ("7d", 604800000, 86400000),
        ("90d", 7776000000, 86400000), ("365d", 31536000000, 86400000))],
}


def config_seeds():
    readme_cfg = {
        "actions": DEFAULT_LAYOUT["actions"],
        "features": [{"name": f["name"], "context": f["context"]} for f in DEFAULT_LAYOUT["features"]],
        "windows": [{"name": "1d", "length": "1d", "granularity": "1h"},
                    {"name": "7d", "length": "7d", "granularity": "1d"},
                    {"name": "90d", "length": "90d", "granularity": "1d"},
                    {"name": "365d", "length": "365d", "granularity": "1d"}],
        "limits": {"max_event_bytes": 1048576, "max_items": 10000, "max_string_bytes": 4096},
        "dedup_horizon": "24h", "max_future_skew_ms": 300000, "flush_events": 200000,
    }
    write("config", "readme.json", json.dumps(readme_cfg, indent=2))
    write("config", "layout_default.json", json.dumps(DEFAULT_LAYOUT, separators=(",", ":")))
    write("config", "layout_small.json", json.dumps(SMALL_LAYOUT, separators=(",", ":")))
    write("config", "tuning.json", '{"dedup_horizon": "2w", "max_future_skew_ms": 500,'
          ' "flush_events": 997, "limits": {"max_items": 3}}')
    write("config", "windows_ms.json", '{"windows": [{"name": "w.1", "length": 7200000,'
          ' "granularity": "30m"}, {"name": "w-2", "length": "2w", "granularity": "1d"}]}')
    write("config", "bad_window.json", '{"windows": [{"name": "x", "length": "5h", "granularity": "2h"}]}')
    write("config", "duration.txt", "365d")


def redis_value_seeds():
    w8 = [[3, 1, 1, 0, 0, 0, 0, 0], [0] * 8, [120, 7, 5, 2, 0, 0, 1, 0], [-1, 0, 0, 0, 0, 0, 0, 2**40]]
    write("redis_value", "item_default", bytes([4, 8, 40]) + item_value(w8))
    write("redis_value", "item_small", bytes([1, 3, 8]) + item_value([[9, 2, 2]]))
    write("redis_value", "context", bytes([4, 8, 200]) + context_value([17, 0, 2**33, -5]))
    write("redis_value", "item_max", bytes([2, 18, 0]) + item_value([[2**63 - 1] * 18, [-2**63] * 18]))
    write("redis_value", "nonminimal", bytes([1, 2, 16]) + b"\x83\x00\x80\x80\x00\x02")


def logfile_seeds():
    lines = ("{\"schema\":\"impression.v1\",\"event_id\":\"e1\"}\r\n\n"
             "second line\nthird without newline")
    payload = lines.encode()
    write("logfile", "plain", bytes([1, 0]) + payload)
    write("logfile", "plain_maxline", bytes([1, 7]) + payload)
    write("logfile", "gzip", bytes([2, 0]) + payload)
    write("logfile", "zstd_members", bytes([3 | 8, 5]) + payload)
    write("logfile", "gzip_cut", bytes([2 | 8 | 16, 3]) + payload)
    write("logfile", "plain_filler", bytes([1 | 4, 0]) + b"a line crossing\r\nthe chunk\n\nend")
    write("logfile", "gzip_filler_joined", bytes([2 | 4 | 32, 0]) + b"joined\nnext\n")
    write("logfile", "zstd_filler", bytes([3 | 4, 100]) + b"y" * 300 + b"\n")
    # raw files, framing included, for mode 0 to mutate
    write("logfile", "raw_gzip", bytes([0, 0]) + gzip.compress(payload, mtime=0) + gzip.compress(b"m2\n", mtime=0))
    if shutil.which("zstd"):
        z = subprocess.run(["zstd", "-q", "-c", "--no-check"], input=payload,
                           stdout=subprocess.PIPE, check=True).stdout
        write("logfile", "raw_zstd", bytes([0, 0]) + z + z)
    write("logfile", "raw_plain", bytes([0, 0]) + payload)


def meta_reply(style, version, layout_text):
    """The meta hash as HGETALL returns it (field, value, ...) or as
    HMGET <meta> layout_version fingerprint layout does (values only)."""
    if style == "hmget":
        return array([bulk(version), bulk("f00d"), bulk(layout_text)])
    return array([bulk("layout_version"), bulk(version), bulk("fingerprint"), bulk("f00d"),
                  bulk("layout"), bulk(layout_text), bulk("created_ms"), bulk("1718000000000")])


def client_conversation(style, layout, gen, n_features_lookup1, n_features_lookup2, width, nw,
                        switch=False):
    meta = meta_reply(style, "1", json.dumps(layout, separators=(",", ":")))
    ctx = context_value([10 * (w + 1) for w in range(nw)])
    item = item_value([[w + 1] + [1] * (width - 1) for w in range(nw)])

    def hmgets(n):
        return b"".join(array([bulk(ctx), bulk(item), bulk(None)]) for _ in range(n))

    out = bulk(str(gen)) + meta                                  # iqp_client_open
    if switch:                                                   # lookup 1 sees gen+1
        out += bulk(str(gen + 1)) + hmgets(n_features_lookup1)
        out += bulk(str(gen + 1)) + meta
        gen += 1
    out += bulk(str(gen)) + hmgets(n_features_lookup1)           # lookup 1
    out += bulk(str(gen)) + hmgets(n_features_lookup2)           # lookup 2 (query only)
    return out


def client_seeds():
    # libiqp has read the meta with HGETALL and with HMGET of its three
    # fields; a seed per style keeps the corpus useful to either.
    for style in ("hgetall", "hmget"):
        # lookup 1 gives query, country, gender (every feature); lookup 2 the query only
        write("client", style + "_default", client_conversation(style, DEFAULT_LAYOUT, 7, 5, 1, 8, 4))
        small = client_conversation(style, SMALL_LAYOUT, 3, 2, 1, 3, 1)
        write("client", style + "_small", small)
        write("client", style + "_switch",
              client_conversation(style, SMALL_LAYOUT, 3, 2, 1, 3, 1, switch=True))
        write("client", style + "_version2", bulk("4") + meta_reply(style, "2", "{}"))
        write("client", style + "_hmget_error",
              small[:small.rindex(b"$1\r\n3")] + bulk("3") + b"-OOM\r\n")
    write("client", "nothing_published", bulk(None))
    write("client", "meta_error", bulk("3") + b"-ERR unknown command\r\n")
    write("client", "integer_and_status", bulk("3") + b":12\r\n+OK\r\n")
    # a hostile server's headers: a 300-million-element array, a 3 GB string
    # (issue 13 item 5: libiqp must refuse them, not allocate for them)
    write("client", "huge_array", bulk("3") + b"*300000000\r\n")
    write("client", "huge_string", bulk("3") + b"$3000000000\r\n")


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    os.makedirs(os.path.join(CORPUS, "event"))
    event_seeds()
    config_seeds()
    redis_value_seeds()
    logfile_seeds()
    client_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(f"{t}: {len(os.listdir(os.path.join(CORPUS, t)))} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
