"""The floor of what Frida itself costs per hooked call, for bench/overhead.py.

Spawns a program suspended, hooks one function with a callback that does
nothing, resumes, and waits for the exit. The program reports its own loop time
(examples/bin/hot writes ``loop_ns`` into $LANETRACE_EXPECT), so spawn and
injection time stay out of the figure. Modes:

  attach       Interceptor.attach with a CModule whose onEnter/onLeave are empty:
               Frida's generic thunk (context save, fxsave/fxrstor, listener
               dispatch) with no work in it. Any tracer built on
               Interceptor.attach pays at least this.
  replacefast  Interceptor.replaceFast to a stub that only jumps to the
               relocated original: the redirect alone, the floor of a lean
               trampoline of our own built on replaceFast.

Usage: python bench/frida_floor.py --mode attach|replacefast [--function hot_fn]
           [--select MODULE!FUNCTION ...] -- PROGRAM [ARGS...]
--select (repeatable, globs; attach mode only) hooks every matching function
of the modules loaded at start instead of --function in the main module:
the main module's symbols, other modules' exports.
Prints one JSON object: {"mode", "loop_ns", "run_ns", "hooked", "expect"}:
run_ns is the time from resume to exit; loop_ns and expect are null for a
program that writes no expectation. Exit status 1 with a message on stderr
when the target could not be hooked.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import frida

# frida-python has no common base class for its errors.
FRIDA_ERRORS = tuple(getattr(frida, n) for n in dir(frida)
                     if n.endswith("Error") and isinstance(getattr(frida, n), type))

AGENT = r"""
const fname = %(function)s;
const mode = %(mode)s;
const selectors = %(select)s;

function resolve(name) {
  const main = Process.mainModule;
  let addr = null;
  try { addr = main.findSymbolByName(name); } catch (e) {}
  if (addr === null) addr = main.findExportByName(name);
  if (addr === null) {
    const s = main.enumerateSymbols().find(s => s.name === name);
    if (s) addr = s.address;
  }
  if (addr === null) throw new Error('symbol not found in ' + main.name + ': ' + name);
  return addr;
}

function globRe(glob) {
  return new RegExp('^' + glob.replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*').replace(/\?/g, '.') + '$');
}

// Every function the selectors match, by address (aliases hooked once).
function selected() {
  const found = new Map();
  const main = Process.mainModule;
  for (const sel of selectors) {
    const bang = sel.indexOf('!');
    const modRe = globRe(bang < 0 ? main.name : sel.slice(0, bang));
    const fnRe = globRe(bang < 0 ? sel : sel.slice(bang + 1));
    for (const m of Process.enumerateModules()) {
      if (!modRe.test(m.name)) continue;
      const syms = m.path === main.path
        ? m.enumerateSymbols().filter(s => s.type === 'function')
        : m.enumerateExports().filter(e => e.type === 'function');
      for (const s of syms) {
        if (fnRe.test(s.name) && !s.address.isNull() && !found.has(s.address.toString()))
          found.set(s.address.toString(), { address: s.address, name: m.name + '!' + s.name });
      }
    }
  }
  return [...found.values()];
}

const targets = selectors.length ? selected() : [{ address: resolve(fname), name: fname }];
if (targets.length === 0) throw new Error('no function matches ' + selectors.join(', '));
const target = targets[0].address;
// Kept reachable for the script's lifetime: a collected CModule or stub would
// leave the hook jumping into freed memory.
let keep;
let hookedNames = [targets[0].name];
if (mode === 'attach') {
  keep = new CModule(`
    #include <gum/guminterceptor.h>
    void onEnter (GumInvocationContext * ic) {}
    void onLeave (GumInvocationContext * ic) {}
  `);
  const failed = [];
  for (const t of targets) {
    try { Interceptor.attach(t.address, keep); } catch (e) { failed.push(t.name + ': ' + e.message); }
  }
  if (failed.length === targets.length) throw new Error('no hook took: ' + failed[0]);
  hookedNames = targets.map(t => t.name).filter(n => !failed.some(f => f.startsWith(n + ':')));
} else if (mode === 'replacefast') {
  // jmp [rip+slot]; the slot gets the relocated original once replaceFast has
  // made it. The target is still suspended, so nothing runs the stub before.
  const stub = Memory.alloc(Process.pageSize);
  Memory.protect(stub, Process.pageSize, 'rwx');
  const slot = stub.add(64);
  const w = new X86Writer(stub, { pc: stub });
  w.putJmpNearPtr(slot);
  w.flush();
  const original = Interceptor.replaceFast(target, stub);
  slot.writePointer(original);
  keep = stub;
} else {
  throw new Error('unknown mode ' + mode);
}
Interceptor.flush();
send({ hooked: hookedNames });
"""


def run(argv, mode, function="hot_fn", timeout=600.0, select=()):
    """Runs argv under the given hook mode; returns (the parsed expectation
    or None, ns from resume to exit, the names of the hooked functions)."""
    fd, expect_path = tempfile.mkstemp(prefix="lanetrace-frida-floor-", suffix=".json")
    os.close(fd)
    os.unlink(expect_path)  # the target creates it only when it finishes
    device = frida.get_local_device()
    gone = threading.Event()
    hooked = []
    errors = []

    def on_message(message, data):
        if message["type"] == "send":
            hooked.append(message["payload"])
        else:
            errors.append(message.get("description") or str(message))

    pid = device.spawn(argv, env={"LANETRACE_EXPECT": expect_path}, stdio="pipe")
    try:
        session = device.attach(pid)
        session.on("detached", lambda reason, crash: gone.set())
        script = session.create_script(AGENT % {"function": json.dumps(function),
                                                 "mode": json.dumps(mode),
                                                 "select": json.dumps(list(select))})
        script.on("message", on_message)
        script.load()
        if errors or not hooked:
            raise RuntimeError("hook failed: " + "; ".join(errors or ["no confirmation"]))
        resumed = time.monotonic_ns()
        device.resume(pid)
        if not gone.wait(timeout):
            raise RuntimeError(f"target still running after {timeout:.0f} s")
        run_ns = time.monotonic_ns() - resumed
    except BaseException:
        try:
            device.kill(pid)
        except FRIDA_ERRORS:
            pass
        raise
    try:
        with open(expect_path) as f:
            expect = json.load(f)
    except FileNotFoundError:
        expect = None  # crashed under the hook, or a program without one
    finally:
        if os.path.exists(expect_path):
            os.unlink(expect_path)
    return expect, run_ns, hooked[0]["hooked"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("attach", "replacefast"), required=True)
    ap.add_argument("--function", default="hot_fn")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--select", action="append", default=[], metavar="MODULE!FUNCTION",
                    help="attach mode: hook every match of these globs instead of --function")
    ap.add_argument("program", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv:
        ap.error("no program given: -- PROGRAM [ARGS...]")
    argv[0] = os.path.abspath(argv[0])
    if args.select and args.mode != "attach":
        ap.error("--select works with --mode attach only")
    try:
        expect, run_ns, hooked = run(argv, args.mode, args.function, args.timeout, args.select)
    except (RuntimeError, OSError, *FRIDA_ERRORS) as exc:
        print(f"frida_floor: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"mode": args.mode, "loop_ns": (expect or {}).get("loop_ns"),
                      "run_ns": run_ns, "hooked": hooked, "expect": expect}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
