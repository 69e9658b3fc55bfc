// SPDX-License-Identifier: GPL-2.0
/*
 * oom_stopwatch: a measuring instrument for `make bench`, not part of the
 * driver. It registers two OOM notifiers around priority 80, the one both
 * balloon drivers (C and Rust) use: the first runs just before the balloon's
 * notifier and starts the clock, the second runs just after it and stops
 * it. It thus times the balloon driver's own OOM handler, whichever driver
 * is bound, apart from the kernel's reclaim around it.
 *
 * /sys/kernel/debug/oom_stopwatch/{calls,ns,freed}: notifications seen, the
 * nanoseconds spent between the two notifiers, and what the handlers in
 * between added to the notifier's `freed` count (kernel pages).
 *
 * out_of_memory() runs under oom_lock, so notifications never overlap.
 */
#include <linux/debugfs.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/oom.h>

/* The balloon drivers' priority (VIRTIO_BALLOON_OOM_NOTIFY_PRIORITY). */
#define BALLOON_PRIORITY 80

static u64 calls, total_ns, total_freed;
static u64 start_ns;
static unsigned long start_freed;
static struct dentry *dir;

static int stopwatch_start(struct notifier_block *nb, unsigned long unused, void *parm)
{
	start_freed = *(unsigned long *)parm;
	start_ns = ktime_get_ns();
	return NOTIFY_OK;
}

static int stopwatch_stop(struct notifier_block *nb, unsigned long unused, void *parm)
{
	u64 now = ktime_get_ns();

	calls++;
	total_ns += now - start_ns;
	total_freed += *(unsigned long *)parm - start_freed;
	return NOTIFY_OK;
}

static struct notifier_block start_nb = {
	.notifier_call = stopwatch_start,
	.priority = BALLOON_PRIORITY + 1,
};

static struct notifier_block stop_nb = {
	.notifier_call = stopwatch_stop,
	.priority = BALLOON_PRIORITY - 1,
};

static int __init oom_stopwatch_init(void)
{
	int err;

	dir = debugfs_create_dir("oom_stopwatch", NULL);
	debugfs_create_u64("calls", 0444, dir, &calls);
	debugfs_create_u64("ns", 0444, dir, &total_ns);
	debugfs_create_u64("freed", 0444, dir, &total_freed);
	err = register_oom_notifier(&start_nb);
	if (err)
		goto out_dir;
	err = register_oom_notifier(&stop_nb);
	if (err)
		goto out_start;
	return 0;
out_start:
	unregister_oom_notifier(&start_nb);
out_dir:
	debugfs_remove_recursive(dir);
	return err;
}

static void __exit oom_stopwatch_exit(void)
{
	unregister_oom_notifier(&stop_nb);
	unregister_oom_notifier(&start_nb);
	debugfs_remove_recursive(dir);
}

module_init(oom_stopwatch_init);
module_exit(oom_stopwatch_exit);
MODULE_DESCRIPTION("Times the OOM notifiers between priorities 81 and 79 (make bench)");
MODULE_LICENSE("GPL");
