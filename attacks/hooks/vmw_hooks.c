// SPDX-License-Identifier: GPL-2.0
/*
 * vmw_hooks: the kernel callbacks rootkits register instead of patching
 * code, for vmwatch's tests. Loaded in a test guest only.
 *
 *   insmod vmw_hooks.ko
 *
 * - a netfilter hook on IPv4 PRE_ROUTING in the first network namespace
 *   that watches for a magic ICMP echo (payload starting "vmw-magic") and
 *   logs it, as a magic-packet backdoor waits for its trigger; every packet
 *   is accepted;
 * - a keyboard notifier that counts key presses, as a keylogger would
 *   record them.
 */
#include <linux/module.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/skbuff.h>
#include <linux/keyboard.h>
#include <linux/notifier.h>
#include <net/net_namespace.h>

static unsigned long keys;

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
	pr_info("vmw_hooks: loaded\n");
	return 0;
}

static void __exit vmw_hooks_exit(void)
{
	unregister_keyboard_notifier(&vmw_hooks_nb);
	nf_unregister_net_hook(&init_net, &vmw_hooks_ops);
}

module_init(vmw_hooks_init);
module_exit(vmw_hooks_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmwatch test: a netfilter hook and a keyboard notifier");
