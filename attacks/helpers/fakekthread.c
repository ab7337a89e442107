// fakekthread NAME: renames itself (comm) to NAME, like a kernel thread,
// and sleeps. A test helper for vmwatch's masquerading detector.
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

/* a string for the YARA test to find in this process's memory */
const char vmwatch_marker[] = "VMWATCH-YARA-TEST-MARKER-51c3";

int main(int argc, char **argv)
{
	if (argc > 2)
		puts(vmwatch_marker);
	const char *name = argc > 1 ? argv[1] : "kworker/0:3";
	if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0) {
		perror("prctl");
		return 1;
	}
	for (;;)
		pause();
}
