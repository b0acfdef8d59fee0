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
           -- PROGRAM [ARGS...]
Prints one JSON object: {"mode", "loop_ns", "expect"}; exit status 1 with a
message on stderr when the target could not be hooked or did not report.
"""
import argparse
import json
import os
import sys
import tempfile
import threading

import frida

# frida-python has no common base class for its errors.
FRIDA_ERRORS = tuple(getattr(frida, n) for n in dir(frida)
                     if n.endswith("Error") and isinstance(getattr(frida, n), type))

AGENT = r"""
const fname = %(function)s;
const mode = %(mode)s;

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

const target = resolve(fname);
// Kept reachable for the script's lifetime: a collected CModule or stub would
// leave the hook jumping into freed memory.
let keep;
if (mode === 'attach') {
  keep = new CModule(`
    #include <gum/guminterceptor.h>
    void onEnter (GumInvocationContext * ic) {}
    void onLeave (GumInvocationContext * ic) {}
  `);
  Interceptor.attach(target, keep);
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
send({ hooked: target.toString() });
"""


def run(argv, mode, function="hot_fn", timeout=600.0):
    """Runs argv under the given hook mode; returns the parsed expectation."""
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
                                                 "mode": json.dumps(mode)})
        script.on("message", on_message)
        script.load()
        if errors or not hooked:
            raise RuntimeError("hook failed: " + "; ".join(errors or ["no confirmation"]))
        device.resume(pid)
        if not gone.wait(timeout):
            raise RuntimeError(f"target still running after {timeout:.0f} s")
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
        raise RuntimeError("the target exited without writing its expectation "
                           "(crashed under the hook?)") from None
    finally:
        if os.path.exists(expect_path):
            os.unlink(expect_path)
    return expect


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("attach", "replacefast"), required=True)
    ap.add_argument("--function", default="hot_fn")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("program", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv:
        ap.error("no program given: -- PROGRAM [ARGS...]")
    argv[0] = os.path.abspath(argv[0])
    try:
        expect = run(argv, args.mode, args.function, args.timeout)
    except (RuntimeError, OSError, *FRIDA_ERRORS) as exc:
        print(f"frida_floor: {exc}", file=sys.stderr)
        return 1
    if "loop_ns" not in expect:
        print("frida_floor: the target reported no loop_ns", file=sys.stderr)
        return 1
    print(json.dumps({"mode": args.mode, "loop_ns": expect["loop_ns"], "expect": expect}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
