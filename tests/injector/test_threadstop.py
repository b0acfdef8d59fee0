"""StoppedThreads on a real process: a signal the thread was about to take
when it was stopped is delivered when it is let go, never swallowed."""
import os
import signal
import subprocess
import threading
import time

from lanetrace.injector.threadstop import StoppedThreads

# Counts SIGRTMIN in a C handler: real-time signals queue, so every one sent
# must be counted once.
COUNTER = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile long n;
static void on_sig(int s) { (void)s; n++; }
int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_sig;
    sigaction(SIGRTMIN, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    char b[16];
    for (;;) {
        ssize_t r = read(0, b, sizeof b);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    printf("%ld\n", n);
    return 0;
}
"""


def test_stopped_threads__signals_arriving_while_stopping_and_releasing__then_every_one_handled(tmp_path):
    src = tmp_path / "counter.c"
    src.write_text(COUNTER)
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "counter"), str(src)], check=True)
    target = subprocess.Popen([str(tmp_path / "counter")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline() == "ready\n"
        sent = 1000

        def send():
            for i in range(sent):
                os.kill(target.pid, signal.SIGRTMIN)
                if i % 10 == 0:
                    time.sleep(0.0005)

        sender = threading.Thread(target=send)
        sender.start()
        rounds = 0
        while sender.is_alive() or rounds < 10:
            with StoppedThreads(target.pid, [target.pid]):
                rounds += 1
        sender.join()
        out, _ = target.communicate("", timeout=30)
        assert (target.returncode, int(out)) == (0, sent), f"{rounds} stop rounds"
    finally:
        if target.poll() is None:
            target.kill()
