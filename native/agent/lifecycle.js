// Target lifecycle, reported to the injector: how the process ends.
//
// A message sent while a process exits is lost unless the exiting thread
// waits for the injector's answer, so each report blocks on 'exit-ack'. This
// runs once per process, never per traced event.
'use strict';

const libc = Process.getModuleByName('libc.so.6');

function report(payload) {
  send(payload);
  recv('exit-ack', () => {}).wait();
}

for (const name of ['exit', '_exit']) {
  const address = libc.findExportByName(name);
  if (address !== null) {
    Interceptor.attach(address, {
      onEnter(args) { report({ type: 'exit', via: name, code: args[0].toInt32() }); },
    });
  }
}

// Frida reports fatal signals as exceptions; returning false lets the signal
// take its course, so the target dies exactly as it would untraced.
const SIGNALS = {
  'abort': 6, 'access-violation': 11, 'guard-page': 11, 'illegal-instruction': 4,
  'arithmetic': 8, 'breakpoint': 5, 'single-step': 5, 'system': 31,
};
// The registers at the fault, for the trace's SignalDelivery event, as hex
// strings (u64 does not fit a JS number). CpuContext's registers are
// accessors, not own properties, so they are named here.
const CONTEXT_REGISTERS = [
  'pc', 'sp', 'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip',
];
function contextRegisters(context) {
  const regs = {};
  if (!context) return regs;
  for (const name of CONTEXT_REGISTERS) {
    try {
      const v = context[name];
      if (v !== undefined && v !== null) regs[name] = v.toString();
    } catch (e) { /* not on this architecture */ }
  }
  return regs;
}

Process.setExceptionHandler((details) => {
  report({
    type: 'crash', kind: details.type, signal: SIGNALS[details.type] || 0,
    address: details.address.toString(), threadId: Process.getCurrentThreadId(),
    registers: contextRegisters(details.context),
  });
  return false;
});

rpc.exports = {
  modules() {
    return Process.enumerateModules().map((m) => ({ name: m.name, path: m.path }));
  },
};
