// forgeps: an unprivileged process that tries to write to the operator's
// terminal through vmwatch's tables: it sets its name (comm) to escape
// sequences and re-executes itself with an argv[0] that holds a newline
// and a forged ps row, then sleeps. A test helper.
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "forged") != 0) {
		char *args[] = {"x\n1     0     0    0    0     S      0.01s   1    init   FORGED-ROW\x1b[2J", "forged", NULL};
		execv("/proc/self/exe", args);
		perror("execv");
		return 1;
	}
	prctl(PR_SET_NAME, "\x1b]0;pwn\x07\x1b[31m", 0, 0, 0);
	for (;;)
		pause();
}
