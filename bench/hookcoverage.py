"""How the functions of real programs are hooked: for each program of the
fidelity corpus (Debian packages nobody here wrote), how many selected
functions took our fast patch, how many Frida's Interceptor.attach fallback,
how many were left alone and why; whether the traced run's stdout and exit
status equal the untraced run's; and the wall time of both.

Usage: python bench/hookcoverage.py [--only sqlite3,python3,...] [--json]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANETRACE = [sys.executable, "-m", "lanetrace"]


def corpus(workdir: str) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (selection, argv)"""
    data = os.path.join(workdir, "data.bin")
    with open(data, "wb") as f:
        f.write(os.urandom(1 << 16))
    subprocess.run(["xz", "-k", "-1", data], check=True)
    sql = ";".join(["create table t(a integer, b text)"]
                   + [f"insert into t values({i}, 'row{i}')" for i in range(200)]
                   + ["select count(*), sum(a), max(b) from t where a % 3 = 0"]) + ";"
    return {
        "sqlite3": (["-I", "libsqlite3*"], ["sqlite3", ":memory:", sql]),
        "python3": ([], ["/usr/bin/python3.11", "-c", "import json; print(sum(len(json.dumps({'k': i})) for i in range(2000)))"]),
        "openssl": (["-I", "libcrypto*"], ["openssl", "dgst", "-sha256", data]),
        "jq": (["-I", "libjq*", "-I", "libonig*"], ["jq", "-n", "-c", "[range(2000) | select(. % 7 == 0) | tostring | test(\"1$\")] | map(select(.)) | length"]),
        "xz": (["-I", "liblzma*"], ["xz", "-c", "-1", data]),
        "xz-d": (["-I", "liblzma*"], ["xz", "-dc", data + ".xz"]),
        "curl": (["-I", "libcurl*"], ["curl", "-s", f"file://{data}", "-o", "/dev/null", "-w", "%{size_download}\n"]),
    }


def run(argv, **kw):
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, **kw)
    return p, time.monotonic() - t


def measure(only: list[str] | None = None) -> list[dict]:
    """One row per corpus program (all of them, or those named)."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, (selection, argv) in corpus(work).items():
            if only and name not in only:
                continue
            plain, t_plain = run(argv)
            out = os.path.join(work, f"traces-{name}")
            traced, t_traced = run([*LANETRACE, "run", "-o", out, *selection, "--", *argv],
                                   cwd=work, timeout=600)
            manifests = glob.glob(os.path.join(out, "*", "pid_*", "trace.json"))
            hooks = json.load(open(manifests[0])).get("hooks", {}) if manifests else {}
            selected = hooks.get("fast", 0) + hooks.get("fallback", 0) + hooks.get("skipped", 0)
            rows.append({
                "program": name, "same": traced.stdout == plain.stdout and traced.returncode == plain.returncode,
                "exit": (plain.returncode, traced.returncode), "fast": hooks.get("fast", 0),
                "fallback": hooks.get("fallback", 0), "skipped": hooks.get("skipped", 0),
                "fallbackPct": 100.0 * hooks.get("fallback", 0) / selected if selected else 0.0,
                "skippedByReason": hooks.get("skippedByReason", {}),
                "fallbackByReason": hooks.get("fallbackByReason", {}),
                "untracedS": t_plain, "tracedS": t_traced,
            })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated program names")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.only.split(",") if args.only else None)
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"{'program':10} {'same':5} {'exit':8} {'fast':>6} {'fallback':>9} {'fb %':>6} {'skipped':>8}"
          f" {'untraced':>9} {'traced':>8}  skipped by reason")
    for r in rows:
        print(f"{r['program']:10} {str(r['same']):5} {str(r['exit']):8} {r['fast']:>6} {r['fallback']:>9}"
              f" {r['fallbackPct']:>5.1f}% {r['skipped']:>8} {r['untracedS']:>8.2f}s {r['tracedS']:>7.2f}s"
              f"  {', '.join(f'{k} {v}' for k, v in r['skippedByReason'].items())}")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
