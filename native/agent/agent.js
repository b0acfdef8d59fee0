'use strict';
/*
 * lanetrace agent (Frida 17). Thin: it selects functions, installs hooks and
 * reports; every event is recorded by the native agent library
 * (liblanetrace_agent.so) — no JS runs per call.
 *
 * Hook path: our own 5-byte `jmp rel32` at the function's entry (after an
 * endbr64) into a slot near its module, which holds the stub (push rax;
 * movabs rax, &desc; jmp lt_entry_tramp) and the relocated first
 * instructions (agent.c, lt_install). Whether a function may be
 * patched, and the relocated bytes, are decided outside the target by the
 * injector (hooksafety.py) from the code as it is in memory. Functions it
 * cannot relocate fall back to Interceptor.attach with the CModule glue
 * (glue.c) calling lt_cm_enter/lt_cm_leave.
 *
 * RPC (driven by the injector):
 *   init({shmName, agentLibPath, programThreads, glueSource?, resolve?})
 *       programThreads: the thread ids the process had before Frida attached
 *       resolve: [{base, name, names:[...]}]: IFUNCs of the modules the
 *       injector plans, resolved as moduleFunctions does
 *       -> {..., resolved: {base: [address | null, ...]}}
 *   plan({include, exclude, includeModules, excludeModules, given?})
 *       given: {base: {name, size, functions:[{name, address, size, ifunc?}], skipped,
 *               roles:[{name, address, size, role}]}}: modules the injector
 *               planned from their files (planahead.py), used when Frida
 *               reports the same name, base and size
 *       -> {functions:[{id, module, modulePath, name, address, size, ifunc?, role?}],
 *           skipped:[{name, reason}], plannedAhead:[module name...],
 *           modules:[{name, path, base, size, starts:[address...] | null (given),
 *                     slotBase, slotCount}]}
 *   install({verdicts: {id: {kind:'fast'} | {kind:'fallback'|'skip', reason}},
 *            batch: hex of the fast hooks' records (install.c), populateNow?})
 *       planned functions without a verdict stay pending for a later install()
 *       -> {replaced, attached, failed:[{name, reason, code}], demoted:{reason: n}}
 *   setTriggers({functionIds:[...]}) -> {set, unknown:[...]}
 *       ENTRY of these functions appends a mark {ts, "symbol", fid, tid} to
 *       the control block (a flag byte in the hook descriptor, checked by
 *       the native hook path; no JS per event). Replaces the previous set;
 *       functions installed later (dlopen) get their flag at install.
 *   addMark({kind, functionId?, tid?}) -> {ok}   kind: crash | manual | time
 *   detach(); stats()
 * Later dlopen()s: matching functions are first announced with
 *   send({type:'functions', seq, modules:[...as in plan], functions:[...], skipped})
 * and the loading thread blocks on recv('functions-ack') (the injector
 * posts {type:'functions-ack', seq, verdicts, batch} once the writer acked them)
 * before the hooks are installed, before dlopen returns.
 */

/* ---- Built-in excludes ------------------------------------------------------
 * Modules never hooked:
 *   liblanetrace_agent.so  our own hook path: would recurse
 *   frida-agent*           Frida itself (cloaked anyway)
 *   ld-linux*, ld-*.so*    the loader: TLS setup, lazy binding and dlopen run
 *                          inside it, also underneath our slow path
 *   linux-vdso.so*         clock_gettime lives there and runs on every event
 */
const BUILTIN_EXCLUDE_MODULES = [
  ['liblanetrace_agent.so', 'lanetrace agent library (hook path would recurse)'],
  ['frida-agent*', 'Frida agent'],
  ['ld-linux*', 'dynamic loader (TLS setup, lazy binding, dlopen)'],
  ['ld-*.so*', 'dynamic loader (TLS setup, lazy binding, dlopen)'],
  ['linux-vdso.so*', 'vDSO (clock_gettime runs on every event)'],
];

/* Functions never hooked, in any module:
 *   what the hook path itself calls (a hooked call from inside our handler
 *   passes through the reentrancy guard, but these would still cost on
 *   every event or run before the per-thread state exists);
 *   startup/teardown code that runs before TLS is ready or never returns;
 *   functions that return twice or read their own return address (a
 *   replaced return address would be saved and jumped to later);
 *   functions that never return (their frame would stay on the shadow
 *   stack; harmless, but they are noise). */
const BUILTIN_EXCLUDE_FUNCTIONS = [
  // hook path and its slow path (thread init: gettid, mmap, pthread_setspecific)
  ['clock_gettime', 'hook path (timestamps)'], ['__clock_gettime*', 'hook path (timestamps)'],
  ['__vdso_*', 'hook path (timestamps)'], ['syscall', 'hook path (gettid)'],
  ['gettid', 'hook path'], ['mmap', 'hook path (thread init)'], ['mmap64', 'hook path (thread init)'],
  ['__mmap', 'hook path (thread init)'], ['munmap', 'hook path'],
  ['pthread_setspecific', 'hook path (thread init)'], ['__pthread_setspecific', 'hook path (thread init)'],
  ['pthread_getspecific', 'hook path'], ['pthread_key_create', 'hook path'],
  ['__tls_get_addr', 'TLS access'], ['__tls_get_addr_slow', 'TLS access'],
  ['opendir', 'agent init'], ['readdir', 'agent init'], ['readdir64', 'agent init'], ['closedir', 'agent init'],
  ['_dl_*', 'loader internals'], ['__libc_early_init', 'loader internals'],
  // program/thread startup and teardown
  ['_start', 'startup (before TLS, never returns)'], ['_init', 'startup'], ['_fini', 'teardown'],
  ['frame_dummy', 'startup'], ['register_tm_clones', 'startup'], ['deregister_tm_clones', 'startup'],
  ['__do_global_dtors_aux', 'teardown'], ['__libc_csu_init', 'startup'], ['__libc_csu_fini', 'teardown'],
  ['__libc_start_main', 'startup (never returns)'], ['__libc_start_call_main', 'startup (never returns)'],
  ['_dl_relocate_static_pie', 'startup'], ['__x86.get_pc_thunk.*', 'position-independent code thunk'],
  ['start_thread', 'thread startup'], ['clone', 'thread startup'], ['clone3', 'thread startup'],
  ['__clone*', 'thread startup'],
  // return twice / context switches / read their return address
  ['setjmp', 'returns twice'], ['_setjmp', 'returns twice'], ['__setjmp', 'returns twice'],
  ['sigsetjmp', 'returns twice'], ['__sigsetjmp', 'returns twice'], ['_longjmp', 'never returns'],
  ['longjmp', 'never returns'], ['siglongjmp', 'never returns'], ['__longjmp*', 'never returns'],
  ['__libc_longjmp', 'never returns'], ['__libc_siglongjmp', 'never returns'],
  ['vfork', 'returns twice (shared stack)'], ['__vfork', 'returns twice (shared stack)'],
  ['fork', 'returns twice'], ['_Fork', 'returns twice'], ['__libc_fork', 'returns twice'],
  ['getcontext', 'returns twice'], ['setcontext', 'never returns'], ['swapcontext', 'switches stacks'],
  ['makecontext', 'switches stacks'], ['__start_context', 'switches stacks'],
  ['__restore_rt', 'signal return trampoline'],
  ['__cxa_throw', 'unwinds through hooked frames'], ['__cxa_rethrow', 'unwinds through hooked frames'],
  ['__cxa_begin_catch', 'unwinder (hooked to re-arm returns)'], ['_Unwind_*', 'unwinder'],
  ['__gxx_personality_v0', 'unwinder'], ['__gcc_personality_v0', 'unwinder'],
  // never return
  ['exit', 'never returns'], ['_exit', 'never returns'], ['_Exit', 'never returns'],
  ['abort', 'never returns'], ['pthread_exit', 'never returns'], ['__pthread_unwind*', 'never returns'],
  ['__stack_chk_fail', 'never returns'], ['__assert_fail', 'never returns'],
];

/* Bytes per hook slot (hooksafety.SLOT_BYTES) */
const SLOT_BYTES = 96;
/* Hooked in every module that defines them, whatever the selection, but not
 * traced: where a C++ exception starts unwinding (our hijacked returns are
 * put back for the unwinder) and where it is caught (frames below are closed
 * as unwound, the rest re-armed). agent.c LT_ROLE_*. Frida's own
 * Interceptor.attach on __cxa_throw breaks unwinding, so these take our
 * patch or nothing. */
const ROLE_FUNCTIONS = [['__cxa_throw', 1], ['__cxa_rethrow', 1], ['__cxa_begin_catch', 2]];
const LT_INSTALL_WHY = { 1: 'code-changed', 2: 'mprotect-refused', 3: 'out-of-memory' };

/* ---- state ----------------------------------------------------------------- */
const st = {
  lib: null, nf: {}, glueSource: null, cm: null, agentLibPath: null,
  selection: null,
  nextId: 1,
  byAddress: new Map(),      // address string -> fn
  plannedModules: new Set(), // module paths already planned
  pending: [],               // planned, not installed yet
  installed: [],             // {fn, kind:'replaced'|'attached', listener?, stub?}
  failed: [],
  skippedTotal: 0,
  dlopenHooks: [],
  seq: 0,
  detached: false,
  dlopenErrors: [],
  triggers: new Set(),       // function ids flagged as triggers
  given: {},                 // plan(): the injector's plan by module base (planahead.py)
  populated: false,          // lt_populate scheduled
};

const MARK_KINDS = { symbol: 1, crash: 2, time: 3, manual: 4 };

function globToRegExp(glob) {
  let re = '^';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const j = glob.indexOf(']', i + 1);
      if (j < 0) { re += '\\['; continue; }
      let body = glob.slice(i + 1, j);
      if (body.startsWith('!')) body = '^' + body.slice(1);
      re += '[' + body.replace(/\\/g, '\\\\') + ']';
      i = j;
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(re + '$');
}

function compilePatterns(list, what) {
  if (!Array.isArray(list)) throw new Error(`${what} must be a list of glob patterns`);
  return list.map(p => {
    if (typeof p !== 'string' || p.length === 0) throw new Error(`${what}: invalid pattern ${JSON.stringify(p)}`);
    const bang = p.indexOf('!');
    if (bang >= 0) {
      if (bang === 0 || bang === p.length - 1) throw new Error(`${what}: invalid pattern '${p}' (expected MODULE!FUNCTION)`);
      return { text: p, module: globToRegExp(p.slice(0, bang)), func: globToRegExp(p.slice(bang + 1)) };
    }
    return { text: p, module: null, func: globToRegExp(p) };
  });
}

const BUILTIN_MOD = BUILTIN_EXCLUDE_MODULES.map(([g, why]) => ({ re: globToRegExp(g), why }));
const BUILTIN_FN = BUILTIN_EXCLUDE_FUNCTIONS.map(([g, why]) => ({ re: globToRegExp(g), why }));
/* all of BUILTIN_FN in one test: most functions match none, and one regex
 * per function instead of a hundred is most of the plan's time */
const BUILTIN_FN_ANY = new RegExp(`^(?:${BUILTIN_FN.map(b => b.re.source.slice(1, -1)).join('|')})$`);

function builtinModuleExclude(mod) {
  const libBase = st.agentLibPath ? st.agentLibPath.split('/').pop() : null;
  if (libBase && mod.name === libBase) return 'lanetrace agent library (hook path would recurse)';
  for (const b of BUILTIN_MOD) if (b.re.test(mod.name)) return b.why;
  if (mod.path && mod.path.indexOf('frida-agent') >= 0) return 'Frida agent';
  return null;
}

/* Functions of a module with a symbol (exports + symbol table, type
 * function), deduplicated by address. Every alias is kept for matching;
 * the display name prefers exported, global, then non-underscore names. */
function moduleFunctions(mod) {
  const base = mod.base, end = mod.base.add(mod.size);
  const byAddr = new Map();
  const add = (name, address, size, score) => {
    if (!name || address.isNull() || address.compare(base) < 0 || address.compare(end) >= 0) return;
    if (!name.startsWith('_')) score += 1;
    const key = address.toString();
    const cur = byAddr.get(key);
    if (cur === undefined) { byAddr.set(key, { name, address, size: size || 0, score, aliases: [name] }); return; }
    if (!cur.size && size) cur.size = size;
    if (cur.aliases.indexOf(name) < 0) cur.aliases.push(name);
    if (score > cur.score) { cur.name = name; cur.score = score; }
  };
  let symbols = [];
  try { symbols = mod.enumerateSymbols(); } catch (e) { /* stripped or unreadable */ }
  const starts = new Set();
  for (const s of symbols) {
    if (s.type === 'function') {
      add(s.name, s.address, s.size, s.isGlobal ? 2 : 0);
      starts.add(s.address.toString());
    } else if (s.type === 'unknown' && s.isGlobal) {
      // An IFUNC is listed at its resolver; the loader's choice is what runs
      // (dlsym runs the resolver). Several names may share one implementation.
      starts.add(s.address.toString());
      const impl = mod.findExportByName(s.name);
      if (impl !== null && !impl.equals(s.address)) {
        add(s.name, impl, 0, 3);
        const f = byAddr.get(impl.toString());
        if (f !== undefined) f.ifunc = true;
      }
    }
  }
  let exports = [];
  try { exports = mod.enumerateExports(); } catch (e) { }
  for (const e of exports) if (e.type === 'function') { add(e.name, e.address, 0, 4); starts.add(e.address.toString()); }
  const fns = Array.from(byAddr.values());
  for (const f of fns) starts.add(f.address.toString());
  return { fns, starts: Array.from(starts) };
}

/* moduleFunctions, enumerated once per module and plan */
const functionsCache = new Map();
function moduleFunctionsOnce(mod) {
  let r = functionsCache.get(mod.path);
  if (r === undefined) { r = moduleFunctions(mod); functionsCache.set(mod.path, r); }
  return r;
}

/* Number a planned function (unless another module or a replan has its
 * address) and queue it for install(). */
function adopt(mod, name, key, size, extra) {
  if (st.byAddress.has(key)) return null; // aliases across modules / replans
  const fn = Object.assign({ id: st.nextId++, module: mod.name, modulePath: mod.path, name,
    address: key, size }, extra);
  st.byAddress.set(key, fn);
  st.pending.push(fn);
  return fn;
}

/* The injector's plan of this module (planahead.py), when it is for this
 * very module: same name, base and size as Frida reports. */
function givenFor(mod) {
  const g = st.given[mod.base.toString()];
  return g !== undefined && g.name === mod.name && g.size === mod.size ? g : undefined;
}

/* Selection for one module -> {functions, skipped, starts}; assigns ids.
 * starts: every function entry of the module (for the injector's safety
 * analysis), when it was enumerated. A module the injector planned from
 * its file (`given`) is only numbered here; its starts are the injector's. */
function planModule(mod, sel, isMain, given) {
  const out = { functions: [], skipped: [], starts: null, given: false };
  if (st.plannedModules.has(mod.path)) return out;
  st.plannedModules.add(mod.path);
  if (builtinModuleExclude(mod)) return out;
  for (const x of sel.excludeModules) if (x.func.test(mod.name)) return out;
  const wholeModule = sel.includeModules.some(p => p.func.test(mod.name)) ||
    (sel.include.length === 0 && sel.includeModules.length === 0 && isMain);
  const incPatterns = sel.include.filter(p => p.module === null || p.module.test(mod.name));
  if (!wholeModule && incPatterns.length === 0) return out;
  if (given !== undefined) {
    out.given = true;
    out.skipped = given.skipped;
    for (const f of given.functions) {
      const fn = adopt(mod, f.name, f.address, f.size, f.ifunc ? { ifunc: true } : {});
      if (fn !== null) out.functions.push(fn);
    }
    return out;
  }
  const { fns, starts } = moduleFunctionsOnce(mod);
  out.starts = starts;
  for (const f of fns) {
    const aliasMatch = re => f.aliases.find(n => re.test(n));
    let name = f.name;
    if (!wholeModule) {
      let hit;
      for (const p of incPatterns) if ((hit = aliasMatch(p.func)) !== undefined) break;
      if (hit === undefined) continue;
      name = hit;
    }
    const ex = sel.exclude.find(p => (p.module === null || p.module.test(mod.name)) && aliasMatch(p.func) !== undefined);
    if (ex) { out.skipped.push({ name: `${mod.name}!${name}`, reason: `excluded by -x ${ex.text}` }); continue; }
    const b = aliasMatch(BUILTIN_FN_ANY) === undefined ? undefined : BUILTIN_FN.find(x => aliasMatch(x.re) !== undefined);
    if (b) { out.skipped.push({ name: `${mod.name}!${name}`, reason: `built-in exclude: ${b.why}` }); continue; }
    const fn = adopt(mod, name, f.address.toString(), f.size, f.ifunc ? { ifunc: true } : {});
    if (fn !== null) out.functions.push(fn);
  }
  return out;
}

/* The ROLE_FUNCTIONS this module defines itself (dlsym also finds its
 * dependencies' ones); the injector's when it planned the module. */
function planRoles(mod, given) {
  const out = [];
  if (builtinModuleExclude(mod)) return out;
  if (given !== undefined) {
    for (const r of given.roles) {
      const fn = adopt(mod, r.name, r.address, r.size, { role: r.role });
      if (fn !== null) out.push(fn);
    }
    return out;
  }
  for (const [name, role] of ROLE_FUNCTIONS) {
    const a = mod.findExportByName(name);
    if (a === null || a.compare(mod.base) < 0 || a.compare(mod.base.add(mod.size)) >= 0) continue;
    const sym = st.byAddress.has(a.toString()) ? undefined : moduleFunctionsOnce(mod).fns.find(x => x.address.equals(a));
    const fn = adopt(mod, name, a.toString(), sym ? sym.size : 0, { role });
    if (fn !== null) out.push(fn);
  }
  return out;
}

function planModules(mods) {
  const res = { functions: [], skipped: [], modules: [], plannedAhead: [] };
  const main = Process.mainModule;
  for (const m of mods) {
    const r = planModule(m, st.selection, m.path === main.path, givenFor(m));
    // a module the selection takes nothing of is not in the injector's plan
    const roles = planRoles(m, r.given ? givenFor(m) : undefined);
    if (r.given) res.plannedAhead.push(m.name);
    const fns = r.functions.concat(roles);
    res.functions.push(...fns);
    res.skipped.push(...r.skipped);
    if (fns.length === 0) continue;
    const slots = st.nf.allocNear(uint64(m.base.toString()), uint64(m.base.add(m.size).toString()),
      uint64(fns.length * SLOT_BYTES));
    res.modules.push({
      name: m.name, path: m.path, base: m.base.toString(), size: m.size,
      starts: r.given ? null : r.starts || moduleFunctionsOnce(m).starts,
      slotBase: slots.isNull() ? '0x0' : slots.toString(), slotCount: slots.isNull() ? 0 : fns.length,
    });
  }
  st.skippedTotal += res.skipped.length;
  functionsCache.clear();
  return res;
}

function glue() {
  if (st.cm !== null) return st.cm;
  let src = st.glueSource;
  if (!src) {
    const dir = st.agentLibPath.substring(0, st.agentLibPath.lastIndexOf('/'));
    src = File.readAllText(dir + '/agent/glue.c');
  }
  st.cm = new CModule(src, {
    lt_cm_enter: st.lib.getExportByName('lt_cm_enter'),
    lt_cm_leave: st.lib.getExportByName('lt_cm_leave'),
  });
  return st.cm;
}

/* The fast hooks of one install, written by one native call (install.c,
 * lt_install_batch) from the injector's batch (hex): for each record, its
 * function id, its stub (0 when not installed) and lt_install's reason. */
function installBatch(hex, max) {
  if (max === 0) return { n: 0, malformed: false, stubs: NULL, fids: [], whys: [] };
  const fids = Memory.alloc(4 * max), stubs = Memory.alloc(8 * max), whys = Memory.alloc(4 * max);
  let n = max === 0 || hex.length === 0 ? 0
    : st.nf.installBatch(Memory.allocUtf8String(hex), uint64(hex.length), max, fids, stubs, whys).toNumber();
  const malformed = n < 0;
  if (malformed) n = -1 - n;
  return {
    n, malformed, stubs,
    fids: n ? new Uint32Array(fids.readByteArray(4 * n)) : [],
    whys: n ? new Int32Array(whys.readByteArray(4 * n)) : [],
  };
}

/* Install the pending functions as the injector decided (verdicts by id;
 * the fast ones' code is in `batch`, hooksafety.install_request). A fast
 * hook goes live when its jump is written (lt_install); spawned targets are
 * suspended meanwhile, running ones have their threads stopped by the
 * injector. Nothing here may take a libc lock: one of the stopped threads
 * may hold it. */
function installPending(verdicts, batch) {
  const res = { replaced: 0, attached: 0, failed: [], demoted: {} };
  const todo = st.pending;
  st.pending = [];
  if (todo.length === 0 || st.detached) return res;
  verdicts = verdicts || {};
  let cm = null, cmError = null;
  const attach = (fn, reason) => {
    try {
      if (cm === null && cmError === null) { try { cm = glue(); } catch (e) { cmError = e.message; } }
      if (cm === null) throw new Error(`CModule glue unavailable: ${cmError}`);
      const listener = Interceptor.attach(ptr(fn.address), { onEnter: cm.on_enter, onLeave: cm.on_leave }, ptr(fn.id));
      st.installed.push({ fn, kind: 'attached', listener, stub: null });
      res.attached++;
    } catch (e) {
      const f = { name: `${fn.module}!${fn.name}`, reason: `${reason}; Interceptor.attach: ${e.message}`, code: 'attach-failed' };
      st.failed.push(f);
      res.failed.push(f);
    }
  };
  const fail = (fn, reason, code) => {
    const f = { name: `${fn.module}!${fn.name}`, reason, code };
    st.failed.push(f);
    res.failed.push(f);
  };
  const fast = new Map();
  for (const fn of todo) {
    const v = verdicts[fn.id] || verdicts[String(fn.id)];
    if (v === undefined) { st.pending.push(fn); continue; } // for a later install() (a thread was inside it)
    if (v.kind === 'skip') continue; // counted by the injector
    if (v.kind === 'fallback') { if (!fn.role) attach(fn, v.reason); continue; }
    fast.set(fn.id, fn);
  }
  const b = installBatch(batch || '', fast.size);
  for (let i = 0; i < b.n; i++) {
    const fn = fast.get(b.fids[i]);
    if (fn === undefined) { // not pending with a fast verdict in this call: never leave it untracked
      const stub = b.stubs.add(8 * i).readPointer();
      if (!stub.isNull()) st.nf.revert(stub);
      continue;
    }
    fast.delete(fn.id);
    if (b.whys[i] === 0) {
      st.installed.push({ fn, kind: 'replaced', stub: b.stubs.add(8 * i).readPointer() });
      if (fn.role) res.roles = (res.roles || 0) + 1; else res.replaced++;
      continue;
    }
    const reason = LT_INSTALL_WHY[b.whys[i]] || 'install-failed';
    if (reason === 'code-changed') { fail(fn, 'its code changed after the safety analysis', reason); continue; }
    if (fn.role) continue;
    res.demoted[reason] = (res.demoted[reason] || 0) + 1;
    attach(fn, reason);
  }
  for (const fn of fast.values())  // decided fast, but its record was missing or malformed
    fail(fn, b.malformed ? 'malformed install record' : 'no install record', 'install-failed');
  Interceptor.flush();
  // triggers chosen before these functions existed
  for (const h of st.installed.slice(st.installed.length - res.replaced - res.attached - (res.roles || 0)))
    if (st.triggers.has(h.fn.id)) st.nf.setTrigger(h.stub || NULL, h.fn.id, 1);
  return res;
}

/* Modules loaded later: announce, wait for the writer's ack, hook. Runs on
 * the thread that called dlopen, before dlopen returns to the program. */
function onModulesMaybeLoaded() {
  if (st.detached || st.selection === null) return;
  const fresh = Process.enumerateModules().filter(m => !st.plannedModules.has(m.path));
  if (fresh.length === 0) return;
  const r = planModules(fresh);
  if (r.functions.length > 0) {
    const seq = ++st.seq;
    let acked = false, verdicts = {}, batch = '';
    // register before sending, in one JS turn: acks arrive in send order
    const op = recv('functions-ack', msg => { acked = true; verdicts = msg.verdicts || {}; batch = msg.batch || ''; });
    send({ type: 'functions', seq, modules: r.modules, functions: r.functions, skipped: r.skipped });
    op.wait();
    if (!acked) return;
    const res = installPending(verdicts, batch);
    send({ type: 'installed', failed: res.failed, demoted: res.demoted, replaced: res.replaced, attached: res.attached });
    return;
  }
  const res = installPending({});
  if (res.failed.length) send({ type: 'install-failed', failed: res.failed });
}

function hookDlopen() {
  for (const name of ['dlopen', 'dlmopen']) {
    const addr = Module.findGlobalExportByName(name);
    if (addr === null) continue;
    try {
      const l = Interceptor.attach(addr, {
        onLeave(retval) {
          if (retval.isNull()) return;
          try { onModulesMaybeLoaded(); } catch (e) { st.dlopenErrors.push(String(e.stack || e)); }
        },
      });
      st.dlopenHooks.push(l);
    } catch (e) { st.dlopenErrors.push(`${name}: ${e.message}`); }
  }
}

/* ---- RPC ------------------------------------------------------------------- */
function init(opts) {
  if (!opts || typeof opts.shmName !== 'string' || typeof opts.agentLibPath !== 'string')
    throw new Error('init: shmName and agentLibPath are required');
  const resolved = resolveExports(opts.resolve || []);
  st.agentLibPath = opts.agentLibPath;
  st.glueSource = opts.glueSource || null;
  st.lib = Module.load(opts.agentLibPath);
  const e = n => st.lib.getExportByName(n);
  st.nf = {
    init: new NativeFunction(e('lt_init'), 'int', ['pointer', 'pointer', 'uint32']),
    allocNear: new NativeFunction(e('lt_alloc_near'), 'pointer', ['uint64', 'uint64', 'uint64']),
    installBatch: new NativeFunction(e('lt_install_batch'), 'int64',
      ['pointer', 'uint64', 'uint32', 'pointer', 'pointer', 'pointer']),
    revert: new NativeFunction(e('lt_revert'), 'int', ['pointer']),
    ignore: new NativeFunction(e('lt_ignore_thread'), 'void', ['uint32']),
    ignoreForeign: new NativeFunction(e('lt_ignore_foreign_threads'), 'int', ['pointer', 'uint32']),
    detach: new NativeFunction(e('lt_detach'), 'void', []),
    populateStep: new NativeFunction(e('lt_populate_step'), 'int', []),
    stats: new NativeFunction(e('lt_agent_stats'), 'void', ['pointer']),
    setTrigger: new NativeFunction(e('lt_set_trigger'), 'void', ['pointer', 'uint32', 'uint32']),
    addMark: new NativeFunction(e('lt_add_mark'), 'int', ['uint32', 'uint32', 'uint32']),
  };
  // The program's threads as the injector saw them before Frida came in;
  // every other thread now running is Frida's and is ignored.
  // (Process.enumerateThreads is not used: it reads each thread's registers
  // through a ptrace helper, seconds on a busy machine, and it can hang.)
  if (!Array.isArray(opts.programThreads) || opts.programThreads.length === 0)
    throw new Error('init: programThreads (the thread ids before the attach) is required');
  const visible = opts.programThreads;
  const buf = Memory.alloc(4 * Math.max(1, visible.length));
  visible.forEach((tid, i) => buf.add(4 * i).writeU32(tid));
  const ignored = st.nf.ignoreForeign(buf, visible.length);
  st.nf.ignore(Process.getCurrentThreadId());
  const err = Memory.alloc(512);
  const rc = st.nf.init(Memory.allocUtf8String(opts.shmName), err, 512);
  if (rc !== 0) throw new Error(`init: ${err.readUtf8String()}`);
  st.detached = false;
  // compiled now: a fallback hook may be installed while the program's
  // threads are stopped, when nothing may wait on a lock one of them holds
  try { glue(); } catch (e) { /* reported per function when it is needed */ }
  const main = Process.mainModule;
  return {
    pid: Process.id, arch: Process.arch, ignoredThreads: ignored, visibleThreads: visible.length,
    mainModule: { name: main.name, path: main.path, base: main.base.toString() },
    resolved,
  };
}

/* The addresses dlsym gives these names in these modules (IFUNCs: the
 * implementation the loader picked), for the injector's plan. */
function resolveExports(requests) {
  const out = {};
  for (const r of requests) {
    const m = Process.findModuleByAddress(ptr(r.base));
    if (m === null || m.name !== r.name || !m.base.equals(ptr(r.base))) continue;
    out[r.base] = r.names.map(n => { const a = m.findExportByName(n); return a === null ? null : a.toString(); });
  }
  return out;
}

function plan(opts) {
  if (st.lib === null) throw new Error('plan: call init first');
  opts = opts || {};
  st.selection = {
    include: compilePatterns(opts.include || [], '-i'),
    exclude: compilePatterns(opts.exclude || [], '-x'),
    includeModules: compilePatterns(opts.includeModules || [], '-I'),
    excludeModules: compilePatterns(opts.excludeModules || [], '-X'),
  };
  st.given = opts.given || {};
  let r;
  try { r = planModules(Process.enumerateModules()); } finally { st.given = {}; }
  if (st.dlopenHooks.length === 0) hookDlopen();
  return r;
}

/* The segment's pages are mapped in once the hooks are live, after this
 * RPC has answered (lt_init leaves them out: ~0.1 s for the default segment,
 * seconds for a big one, that would delay the hooks), 4 MiB per JS turn so
 * other RPCs and a thread's first event (its state is mmapped, which waits
 * for a populate in progress) wait for one chunk at most. Until then a
 * thread's first pass through a ring takes page faults.
 * A spawned target, still suspended, asks for it inside install() instead
 * (populateNow), so the program starts with every page mapped. */
function populateSoon() {
  if (st.populated) return;
  st.populated = true;
  const step = () => { if (!st.detached && st.nf.populateStep() !== 0) setTimeout(step, 0); };
  setTimeout(step, 0);
}

function install(opts) {
  if (st.selection === null) throw new Error('install: call plan first');
  const res = installPending((opts && opts.verdicts) || {}, (opts && opts.batch) || '');
  if (opts && opts.populateNow && !st.populated) {
    st.populated = true;
    while (st.nf.populateStep() !== 0) { /* suspended: nothing waits */ }
  }
  populateSoon();
  return res;
}

function detach() {
  if (st.detached) return { reverted: 0 };
  st.detached = true;
  let reverted = 0;
  for (const l of st.dlopenHooks) l.detach();
  st.dlopenHooks = [];
  for (const h of st.installed) {
    try {
      if (h.kind === 'replaced') {
        if (Process.findModuleByAddress(ptr(h.fn.address)) === null) continue; // gone with its module
        if (st.nf.revert(h.stub) === 0) reverted++;
      } else {
        h.listener.detach();
        reverted++;
      }
    } catch (e) { /* already gone with its module */ }
  }
  Interceptor.flush();
  st.installed = [];
  if (st.lib !== null) st.nf.detach();
  return { reverted };
}

function setTriggers(opts) {
  if (st.lib === null) throw new Error('setTriggers: call init first');
  const ids = (opts && opts.functionIds) || [];
  if (!Array.isArray(ids) || ids.some(x => !Number.isInteger(x) || x <= 0))
    throw new Error('setTriggers: functionIds must be a list of positive function ids');
  const want = new Set(ids);
  const known = new Set();
  for (const fn of st.byAddress.values()) known.add(fn.id);
  const unknown = ids.filter(x => !known.has(x));
  const byId = new Map(st.installed.map(h => [h.fn.id, h]));
  for (const id of st.triggers) {
    if (want.has(id)) continue;
    const h = byId.get(id);
    st.nf.setTrigger(h && h.stub ? h.stub : NULL, id, 0);
  }
  let set = 0;
  for (const id of want) {
    const h = byId.get(id);
    if (h !== undefined) { st.nf.setTrigger(h.stub || NULL, id, 1); set++; }
  }
  st.triggers = want;
  return { set, pending: want.size - set - unknown.length, unknown };
}

function addMark(opts) {
  if (st.lib === null) throw new Error('addMark: call init first');
  const kind = MARK_KINDS[opts && opts.kind];
  if (kind === undefined) throw new Error(`addMark: unknown kind ${JSON.stringify(opts && opts.kind)}`);
  const tid = opts.tid === undefined ? Process.getCurrentThreadId() : opts.tid;
  return { ok: st.nf.addMark(kind, opts.functionId || 0, tid) === 0 };
}

/* The program's own threads, which the injector stops while it writes
 * hooks into a running process: every thread Frida does not cloak, but the
 * caller. */
function stats() {
  const out = Memory.alloc(8 * 8);
  st.nf.stats(out);
  const v = i => out.add(8 * i).readU64().toNumber();
  return {
    threadsSeen: v(0), stubs: v(1), threadStatesRecycled: v(2), recording: v(3) === 1,
    epoch: v(4), xsaveBytes: v(5), shadowStackFrames: v(6),
    planned: st.byAddress.size, pending: st.pending.length,
    replaced: st.installed.filter(h => h.kind === 'replaced').length,
    attached: st.installed.filter(h => h.kind === 'attached').length,
    failed: st.failed.length, skipped: st.skippedTotal, dlopenErrors: st.dlopenErrors.slice(-10),
    detached: st.detached, triggers: Array.from(st.triggers),
  };
}

rpc.exports = {
  init, plan, install, detach, stats, setTriggers, addMark,
  dispose() { try { detach(); } catch (e) { } },
};
