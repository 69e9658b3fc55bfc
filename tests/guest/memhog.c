// SPDX-License-Identifier: GPL-2.0
/*
 * memhog MIB [HOLD_SECONDS]: allocates MIB MiB of anonymous memory, touches
 * every page, optionally holds it, prints "memhog: MIB MiB ok" and exits 0.
 * With MEMHOG_MEMFREE set in the environment it first prints the guest's
 * MemFree line as it was once every page was touched ("memhog: MemFree: N
 * kB"), while it still holds them all.
 * Built statically on the host and put in the test guests' initramfs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void print_memfree(void)
{
	char line[128];
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f) {
		perror("memhog: /proc/meminfo");
		exit(1);
	}
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "MemFree:", 8)) {
			printf("memhog: %s", line);
			break;
		}
	}
	fclose(f);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	size_t mib, len, off;
	unsigned int hold = 0;
	char *p;

	if (argc < 2) {
		fprintf(stderr, "usage: memhog MIB [HOLD_SECONDS]\n");
		return 2;
	}
	mib = strtoul(argv[1], NULL, 10);
	if (argc > 2)
		hold = strtoul(argv[2], NULL, 10);
	len = mib << 20;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("memhog: mmap");
		return 1;
	}
	for (off = 0; off < len; off += 4096)
		p[off] = (char)off | 1;
	if (getenv("MEMHOG_MEMFREE"))
		print_memfree();
	if (hold)
		sleep(hold);
	printf("memhog: %zu MiB ok\n", mib);
	return 0;
}
