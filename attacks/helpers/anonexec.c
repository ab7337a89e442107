// anonexec: maps anonymous memory, writes code into it (a ret), makes it
// executable and runs it, then sleeps: what injected shellcode or an
// in-memory loader looks like. A test helper: vmwatch must report it
// (high), since this program is no JIT runtime.
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
	unsigned char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(p, 0xc3, 8192); /* ret */
	if (mprotect(p, 8192, PROT_READ | PROT_EXEC) != 0) {
		perror("mprotect");
		return 1;
	}
	((void (*)(void))p)();
	printf("anonexec: code at %p\n", (void *)p);
	fflush(stdout);
	for (;;)
		pause();
}
