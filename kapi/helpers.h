/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C helpers of the module: the static inline functions and macros of the
 * kernel headers that Rust cannot call, one real function each. They are
 * compiled into the module (kapi/helpers.c) instead of being patched into
 * the kernel's rust/helpers, and bindgen turns these declarations into
 * kapi/bindings_generated.rs, named without the vbrs_helper_ prefix.
 */
#ifndef VBRS_HELPERS_H
#define VBRS_HELPERS_H

/*
 * Each header below declares something a helper uses (include what you
 * use): none may count on another to bring in its declarations, which
 * depends on the kernel's configuration. Wakeup sources are declared in
 * <linux/pm_wakeup.h>, which may only be reached through <linux/device.h>.
 */
#include <linux/balloon_compaction.h>
#include <linux/completion.h>
#include <linux/device.h>
#include <linux/gfp.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/swait.h>
#include <linux/timer.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>

/* virtio */
int vbrs_helper_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
				struct virtqueue *vqs[],
				struct virtqueue_info vqs_info[],
				struct irq_affinity *desc);
void vbrs_helper_virtio_device_ready(struct virtio_device *dev);

/* balloon pages */
void vbrs_helper_balloon_devinfo_init(struct balloon_dev_info *balloon);
void vbrs_helper_balloon_page_insert(struct balloon_dev_info *balloon,
				     struct page *page);
void vbrs_helper_balloon_page_finalize(struct page *page);
void vbrs_helper_balloon_page_push(struct list_head *pages, struct page *page);
struct page *vbrs_helper_balloon_page_pop(struct list_head *pages);
unsigned long vbrs_helper_balloon_pages_alloc_bulk(unsigned long nr,
						   struct page **pages);

/* lists */
void vbrs_helper_INIT_LIST_HEAD(struct list_head *list);
bool vbrs_helper_list_empty(const struct list_head *head);

/* pages and memory state */
unsigned long vbrs_helper_page_to_pfn(struct page *page);
void vbrs_helper_get_page(struct page *page);
void vbrs_helper_put_page(struct page *page);
struct zone *vbrs_helper_page_zone(const struct page *page);
void *vbrs_helper_page_address(const struct page *page);
bool vbrs_helper_want_init_on_free(void);
bool vbrs_helper_page_poisoning_enabled_static(void);
void vbrs_helper_count_vm_event(enum vm_event_item item);
unsigned long vbrs_helper_global_node_page_state(enum node_stat_item item);

/* completions, scheduling, irq-saving spinlocks */
void vbrs_helper_init_completion_key(struct completion *x, const char *name,
				     struct lock_class_key *key);
void vbrs_helper_reinit_completion(struct completion *x);
void vbrs_helper_cond_resched(void);
unsigned long vbrs_helper_spin_lock_irqsave(spinlock_t *lock);
void vbrs_helper_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);

/* delayed work */
void vbrs_helper_init_delayed_work_timer_key(struct delayed_work *dwork,
					     const char *name,
					     struct lock_class_key *key);
bool vbrs_helper_queue_delayed_work(struct workqueue_struct *wq,
				    struct delayed_work *dwork,
				    unsigned long delay);
bool vbrs_helper_mod_delayed_work(struct workqueue_struct *wq,
				  struct delayed_work *dwork,
				  unsigned long delay);

/* wakeup sources */
void vbrs_helper_device_set_wakeup_capable(struct device *dev, bool capable);
void vbrs_helper_pm_stay_awake(struct device *dev);
void vbrs_helper_pm_relax(struct device *dev);

#endif /* VBRS_HELPERS_H */
