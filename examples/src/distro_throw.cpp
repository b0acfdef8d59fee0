// C++ exceptions thrown through several frames, built as distributions build
// (g++ -O2): catcher -> middle -> thrower, which throws for some inputs; the
// throw leaves thrower and middle by unwinding. Prints what it caught.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

static volatile long sink;

__attribute__((noinline)) long thrower(int x)
{
    if (x % 4 == 3)
        throw std::runtime_error("odd quarter " + std::to_string(x));
    sink += x;
    return x * 3L;
}

__attribute__((noinline)) long middle(int x)
{
    std::string tag = "m" + std::to_string(x);  // a destructor runs during unwinding
    long r = thrower(x + 1);
    return r + static_cast<long>(tag.size());
}

__attribute__((noinline)) long catcher(int x, std::string &caught)
{
    try {
        return middle(x);
    } catch (const std::runtime_error &e) {
        caught = e.what();
        return -1;
    }
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? std::atoi(argv[1]) : 40;
    long total = 0;
    int caught_count = 0;
    std::string last;
    for (int r = 0; r < rounds; r++) {
        std::string caught;
        long v = catcher(r, caught);
        if (v < 0) {
            caught_count++;
            last = caught;
        } else {
            total += v;
        }
    }
    std::printf("distro_throw rounds=%d caught=%d last=\"%s\" total=%ld\n",
                rounds, caught_count, last.c_str(), total);
    return 0;
}
