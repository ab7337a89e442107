// SPDX-License-Identifier: GPL-2.0
/*
 * vmw_layout: tells the tests where kernel objects are, from the kernel's
 * own compiled layout (this module is built against the guest kernel's
 * headers), so that the attack tests plant their memory writes with
 * knowledge that does not come from vmwatch: the virtual and physical
 * addresses of tasks, modules and their list neighbours, struct member
 * offsets, and phys_base (with the guest's /proc/kallsyms, the physical
 * address of any symbol of the kernel image).
 *
 * It prints to the kernel log and refuses to stay loaded (insmod fails
 * with ECANCELED), so nothing of it remains in the module list.
 *
 *   insmod vmw_layout.ko pids=1,234 mod=dummy modules_head=0xffffffff...
 *
 * Lines: "vmw_layout: obj NAME va=HEX pa=HEX" (NAME ends in the pid, or 0
 * for the module), "vmw_layout: off NAME=N", "vmw_layout: val NAME=HEX",
 * then "vmw_layout: end".
 */
#include <linux/cred.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/vmalloc.h>
#include <linux/version.h>
#include <asm/io.h>
#include <asm/page.h>
#include <asm/pgtable.h>

static int pids[8];
static int npids;
module_param_array(pids, int, &npids, 0);
static char *mod = "";
module_param(mod, charp, 0);
static unsigned long modules_head;
module_param(modules_head, ulong, 0);

/* the physical address of kernel memory: module or vmalloc space, the
 * kernel image, or the direct map */
static unsigned long long pa_of(const void *p)
{
	unsigned long a = (unsigned long)p;

	if (is_vmalloc_addr(p) || (a >= MODULES_VADDR && a < MODULES_END)) {
		struct page *pg = vmalloc_to_page(p);

		return pg ? page_to_phys(pg) + offset_in_page(p) : 0;
	}
	if (a >= __START_KERNEL_map)
		return a - __START_KERNEL_map + phys_base;
	return virt_to_phys(p);
}

static void obj(const char *what, int n, const void *p)
{
	pr_info("vmw_layout: obj %s/%d va=%px pa=%llx\n", what, n, p, pa_of(p));
}

static void show_task(int nr)
{
	struct pid *p = find_get_pid(nr);
	struct task_struct *t = p ? get_pid_task(p, PIDTYPE_PID) : NULL;

	if (!t) {
		pr_info("vmw_layout: task %d not found\n", nr);
		put_pid(p);
		return;
	}
	obj("task", nr, t);
	obj("task_tasks", nr, &t->tasks);
	rcu_read_lock();
	obj("task_tasks_next", nr, t->tasks.next);
	obj("task_tasks_prev", nr, t->tasks.prev);
	rcu_read_unlock();
	obj("task_cred_ptr", nr, &t->cred);
	obj("task_real_cred_ptr", nr, &t->real_cred);
	obj("cred", nr, t->cred);
	put_task_struct(t);
	put_pid(p);
}

static void *module_text(struct module *m)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	return m->mem[MOD_TEXT].base;
#else
	return m->core_layout.base;
#endif
}

static int __init vmw_layout_init(void)
{
	struct module *m;
	int i;

	pr_info("vmw_layout: val phys_base=%lx\n", (unsigned long)phys_base);
	pr_info("vmw_layout: off task_struct.tasks=%zu\n", offsetof(struct task_struct, tasks));
	pr_info("vmw_layout: off task_struct.cred=%zu\n", offsetof(struct task_struct, cred));
	pr_info("vmw_layout: off task_struct.real_cred=%zu\n", offsetof(struct task_struct, real_cred));
	pr_info("vmw_layout: off module.list=%zu\n", offsetof(struct module, list));
	pr_info("vmw_layout: off list_head.next=%zu\n", offsetof(struct list_head, next));
	pr_info("vmw_layout: off list_head.prev=%zu\n", offsetof(struct list_head, prev));
	for (i = 0; i < npids; i++)
		show_task(pids[i]);
	if (*mod && modules_head) {
		rcu_read_lock();
		list_for_each_entry_rcu(m, &THIS_MODULE->list, list) {
			if ((unsigned long)&m->list == modules_head)
				continue; /* the list's head, not a module */
			if (strcmp(m->name, mod) == 0) {
				obj("module", 0, m);
				obj("module_list", 0, &m->list);
				/* this module sits in the list while it
				 * initialises and leaves it when init fails:
				 * name the neighbours the list will have then */
				obj("module_list_next", 0, m->list.next == &THIS_MODULE->list ? THIS_MODULE->list.next : m->list.next);
				obj("module_list_prev", 0, m->list.prev == &THIS_MODULE->list ? THIS_MODULE->list.prev : m->list.prev);
				obj("module_text", 0, module_text(m));
			}
		}
		rcu_read_unlock();
	}
	pr_info("vmw_layout: end\n");
	return -ECANCELED;
}

module_init(vmw_layout_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmwatch test helper: kernel layout facts (test guests only)");
