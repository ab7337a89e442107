// SPDX-License-Identifier: GPL-2.0
/*
 * vmw_hooks: the kernel callbacks rootkits register instead of patching
 * code, for vmwatch's tests. Loaded in a test guest only.
 *
 *   insmod vmw_hooks.ko [tty=1]
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
 *   Restored on rmmod.
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

static unsigned long keys, written, received;

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

static int __init vmw_hooks_init(void)
{
	int err = nf_register_net_hook(&init_net, &vmw_hooks_ops);

	if (err)
		return err;
	err = register_keyboard_notifier(&vmw_hooks_nb);
	if (err) {
		nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
		return err;
	}
	if (tty) {
		sniffed = get_current_tty();
		if (!sniffed) {
			unregister_keyboard_notifier(&vmw_hooks_nb);
			nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
			return -ENOTTY;
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
}

static void __exit vmw_hooks_exit(void)
{
	if (sniffed) {
		sniffed->ldisc->ops = orig_ldisc_ops;
		sniffed->ops = orig_ops;
		tty_kref_put(sniffed);
		pr_info("vmw_hooks: %lu bytes written, %lu received\n", written, received);
	}
	unregister_keyboard_notifier(&vmw_hooks_nb);
	nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
}

module_init(vmw_hooks_init);
module_exit(vmw_hooks_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmwatch test: a netfilter hook and a keyboard notifier");
