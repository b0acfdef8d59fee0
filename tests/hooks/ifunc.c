/* Calls glibc's IFUNC string functions a known number of times. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 100;
    size_t total = 0;
    char buf[64];
    for (int i = 0; i < n; i++) {
        total += strlen(argv[0] + (i & 3));
        memcpy(buf, argv[0], 8);
        total += (unsigned char)buf[i & 7];
    }
    printf("total=%zu\n", total);
    return 0;
}
