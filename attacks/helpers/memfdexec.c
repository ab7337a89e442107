// memfdexec FILE ARGV0 [ARGS...]: copies FILE into a memfd and executes it
// from there, so the running program has no file on disk (fileless
// execution). A test helper for vmwatch's fileless-executable detector.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: memfdexec FILE ARGV0 [ARGS...]\n");
		return 2;
	}
	int in = open(argv[1], O_RDONLY);
	int fd = memfd_create("payload", 0);
	if (in < 0 || fd < 0) {
		perror("open");
		return 1;
	}
	char buf[65536];
	ssize_t n;
	while ((n = read(in, buf, sizeof buf)) > 0)
		if (write(fd, buf, n) != n) {
			perror("write");
			return 1;
		}
	close(in);
	fexecve(fd, argv + 2, environ);
	perror("fexecve");
	return 1;
}
