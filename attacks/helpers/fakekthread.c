// fakekthread NAME: renames itself (comm) to NAME, like a kernel thread,
// and sleeps. A test helper for vmwatch's masquerading detector.
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "kworker/0:3";
	if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0) {
		perror("prctl");
		return 1;
	}
	for (;;)
		pause();
}
