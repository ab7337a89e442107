// bpfkprobe FUNC: loads a BPF program of type kprobe (it only returns 0)
// and attaches it to FUNC through a perf kprobe event, the way bpftrace
// and BCC tools attach theirs, then sleeps. A test helper: tracing in use
// must not look like an attack.
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *func = argc > 1 ? argv[1] : "do_sys_openat2";
	struct bpf_insn prog[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
		{.code = BPF_JMP | BPF_EXIT},
	};
	char log[4096] = "";
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_KPROBE;
	attr.insn_cnt = 2;
	attr.insns = (uintptr_t)prog;
	attr.license = (uintptr_t)"GPL";
	attr.log_buf = (uintptr_t)log;
	attr.log_size = sizeof(log);
	attr.log_level = 1;
	strncpy(attr.prog_name, "vmw_kprobe", sizeof(attr.prog_name) - 1);
	int pfd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (pfd < 0) {
		perror("bpf(BPF_PROG_LOAD)");
		fputs(log, stderr);
		return 1;
	}
	FILE *f = fopen("/sys/bus/event_source/devices/kprobe/type", "r");
	int type = 0;
	if (!f || fscanf(f, "%d", &type) != 1) {
		perror("kprobe PMU type");
		return 1;
	}
	fclose(f);
	struct perf_event_attr pa;
	memset(&pa, 0, sizeof(pa));
	pa.size = sizeof(pa);
	pa.type = type;
	pa.config1 = (uintptr_t)func; /* kprobe_func */
	pa.config2 = 0;               /* probe_offset */
	pa.sample_period = 1;
	pa.wakeup_events = 1;
	int efd = syscall(SYS_perf_event_open, &pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (efd < 0) {
		perror("perf_event_open(kprobe)");
		return 1;
	}
	if (ioctl(efd, PERF_EVENT_IOC_SET_BPF, pfd) < 0 || ioctl(efd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
		perror("attach BPF program");
		return 1;
	}
	printf("bpfkprobe: program on %s\n", func);
	fflush(stdout);
	for (;;)
		pause();
}
