"""Check the engine against external CSV corpora (not part of `.ci/test`: the corpora are not in
this repository). Usage: python3 tests/external/corpora.py CORPORA_DIR [AIRLOCK_BINARY] [-v]

csv-spectrum must parse exactly as its JSON says; every frictionless not-csv/ file must be rejected
as not_csv; the naughty strings must round-trip (formula guard aside), except those holding C0
control characters, which must be refused as binary_content. Other corpora: outcomes are printed.
"""
import json, subprocess, os, csv, io, sys, glob
args = [a for a in sys.argv[1:] if a != "-v"]
C = args[0] if args else "../shared/corpora"
B = args[1] if len(args) > 1 else "target/release/airlock"
def run(path, *extra):
    out = "/tmp/corp_out.csv"
    if os.path.exists(out): os.remove(out)
    p = subprocess.run([B, "process", path, "--output", out, *extra], capture_output=True)
    r = json.loads(p.stdout)
    o = open(out, encoding="utf-8", newline="").read() if os.path.exists(out) else None
    return p.returncode, r, o
tally = {}
def note(corpus, ok, msg):
    t = tally.setdefault(corpus, [0, 0]); t[0 if ok else 1] += 1
    if not ok or "-v" in sys.argv: print(("ok   " if ok else "FAIL ") + corpus + ": " + msg)
# csv-spectrum
for f in sorted(glob.glob(C + "/csv-spectrum/csvs/*.csv")):
    name = os.path.basename(f)[:-4]
    code, r, o = run(f)
    exp = json.load(open(C + f"/csv-spectrum/json/{name}.json"))
    if code != 0:
        note("csv-spectrum", False, f"{name}: {r['rejection']}"); continue
    rows = list(csv.reader(io.StringIO(o, newline="")))
    hdr, data = rows[0], rows[1:]
    got = [dict(zip(hdr, row)) for row in data]
    if name == "location_coordinates":
        ok = len(got) == 1 and len(hdr) == len(data[0])
        note("csv-spectrum", ok, f"{name} (compared by hand: 1 row, {len(hdr)} cols; JSON is known-buggy)")
        continue
    exp = [{k: str(v) for k, v in e.items()} for e in exp]
    note("csv-spectrum", got == exp, f"{name}: got {got} want {exp}" if got != exp else name)
# frictionless not-csv
for f in sorted(glob.glob(C + "/frictionless/not-csv/*")):
    code, r, o = run(f)
    ok = code == 1 and r["rejection"]["code"] in ("not_csv",)
    note("frictionless/not-csv", ok, f"{os.path.basename(f)} -> {r['status']} {r['rejection'] and r['rejection']['code']} {r['input']['detected_type']}")
# everything else: print outcome
for d in ["frictionless/structure", "frictionless/encoding", "frictionless/dialect", "frictionless/valid", "csvlint-rb", "papaparse", "rust-csv", "w3c-csvw"]:
    for f in sorted(glob.glob(C + f"/{d}/*")):
        if f.endswith((".txt", ".md")) or "LICENSE" in f or "UNLICENSE" in f: continue
        code, r, o = run(f)
        rej = r["rejection"]["code"] if r["rejection"] else ""
        print(f"     {d}/{os.path.basename(f)}: {r['status']} {rej} rows={r['rows']} issues={r['issue_counts']} delim={r['dialect'] and r['dialect']['delimiter']!r}")
# naughty strings: each line as a cell must round-trip (modulo formula guard)
alll = [l for l in open(C + "/naughty-strings/blns.txt", encoding="utf-8").read().split("\n") if l and not l.startswith("#")]
ctrl = lambda l: any(ord(c) < 0x20 and c not in "\t\r\n" for c in l)
lines = [l for l in alll if not ctrl(l)]
print("naughty strings with C0 controls (refused as binary_content by design):", len(alll) - len(lines))
one = "/tmp/naughty-ctrl.csv"
for l in alll:
    if ctrl(l):
        with open(one, "w", newline="", encoding="utf-8") as fh:
            w0 = csv.writer(fh); w0.writerow(["v"]); w0.writerow([l])
        c0, r0, _ = run(one)
        note("naughty-strings-c0", c0 == 1 and r0["rejection"]["code"] == "binary_content", repr(l))
tmp = "/tmp/naughty.csv"
with open(tmp, "w", newline="", encoding="utf-8") as fh:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(["id", "value"])
    for i, l in enumerate(lines): w.writerow([i, l])
code, r, o = run(tmp)
if code != 0:
    note("naughty-strings", False, f"rejected: {r['rejection']}")
else:
    rows = list(csv.reader(io.StringIO(o, newline="")))[1:]
    bad = 0
    for (i, v) in rows:
        want = lines[int(i)]
        if v != want and not (v == "'" + want):
            bad += 1; print("naughty mismatch", repr(want), repr(v))
    missing = len(lines) - len(rows)
    note("naughty-strings", bad == 0 and missing == 0, f"{len(rows)} of {len(lines)} strings round-trip ({missing} missing: {r['issue_counts']})")
print(json.dumps(tally))
sys.exit(1 if any(t[1] for t in tally.values()) else 0)
