// SPDX-License-Identifier: GPL-2.0
/*
 * The module's C helpers (declared, and explained, in helpers.h). Each one
 * only calls the inline function or macro it is named after, or does what
 * that macro does with the caller's lockdep class (the _key ones).
 */
#include "helpers.h"

int vbrs_helper_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
				struct virtqueue *vqs[],
				struct virtqueue_info vqs_info[],
				struct irq_affinity *desc)
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, desc);
}

void vbrs_helper_virtio_device_ready(struct virtio_device *dev)
{
	virtio_device_ready(dev);
}

void vbrs_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}

void vbrs_helper_balloon_page_insert(struct balloon_dev_info *balloon,
				     struct page *page)
{
	balloon_page_insert(balloon, page);
}

void vbrs_helper_balloon_page_finalize(struct page *page)
{
	balloon_page_finalize(page);
}

void vbrs_helper_balloon_page_push(struct list_head *pages, struct page *page)
{
	balloon_page_push(pages, page);
}

struct page *vbrs_helper_balloon_page_pop(struct list_head *pages)
{
	return balloon_page_pop(pages);
}

/*
 * Up to nr pages with balloon_page_alloc()'s flags, into the NULL entries
 * of pages[], from the per-CPU lists in one go while the zone is well
 * above its watermark, else one page through the slow path. Returns how
 * many entries are filled.
 */
unsigned long vbrs_helper_balloon_pages_alloc_bulk(unsigned long nr,
						   struct page **pages)
{
	return alloc_pages_bulk_array(balloon_mapping_gfp_mask() |
				      __GFP_NOMEMALLOC | __GFP_NORETRY |
				      __GFP_NOWARN, nr, pages);
}

void vbrs_helper_INIT_LIST_HEAD(struct list_head *list)
{
	INIT_LIST_HEAD(list);
}

bool vbrs_helper_list_empty(const struct list_head *head)
{
	return list_empty(head);
}

unsigned long vbrs_helper_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

void vbrs_helper_get_page(struct page *page)
{
	get_page(page);
}

void vbrs_helper_put_page(struct page *page)
{
	put_page(page);
}

struct zone *vbrs_helper_page_zone(const struct page *page)
{
	return page_zone(page);
}

void *vbrs_helper_page_address(const struct page *page)
{
	return page_address(page);
}

bool vbrs_helper_want_init_on_free(void)
{
	return want_init_on_free();
}

bool vbrs_helper_page_poisoning_enabled_static(void)
{
	return page_poisoning_enabled_static();
}

void vbrs_helper_count_vm_event(enum vm_event_item item)
{
	count_vm_event(item);
}

unsigned long vbrs_helper_global_node_page_state(enum node_stat_item item)
{
	return global_node_page_state(item);
}

/*
 * init_completion() with the caller's lockdep class and name: the macro
 * gives every completion it initialises one class, that of its single
 * expansion here.
 */
void vbrs_helper_init_completion_key(struct completion *x, const char *name,
				     struct lock_class_key *key)
{
	x->done = 0;
	__init_swait_queue_head(&x->wait, name, key);
}

void vbrs_helper_reinit_completion(struct completion *x)
{
	reinit_completion(x);
}

void vbrs_helper_cond_resched(void)
{
	cond_resched();
}

unsigned long vbrs_helper_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void vbrs_helper_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

/*
 * The timer half of INIT_DELAYED_WORK(), with the caller's lockdep class and
 * name (the work half is the kernel crate's init_work_with_key()).
 */
void vbrs_helper_init_delayed_work_timer_key(struct delayed_work *dwork,
					     const char *name,
					     struct lock_class_key *key)
{
	init_timer_key(&dwork->timer, delayed_work_timer_fn, TIMER_IRQSAFE,
		       name, key);
}

bool vbrs_helper_queue_delayed_work(struct workqueue_struct *wq,
				    struct delayed_work *dwork,
				    unsigned long delay)
{
	return queue_delayed_work(wq, dwork, delay);
}

bool vbrs_helper_mod_delayed_work(struct workqueue_struct *wq,
				  struct delayed_work *dwork,
				  unsigned long delay)
{
	return mod_delayed_work(wq, dwork, delay);
}

void vbrs_helper_device_set_wakeup_capable(struct device *dev, bool capable)
{
	device_set_wakeup_capable(dev, capable);
}

void vbrs_helper_pm_stay_awake(struct device *dev)
{
	pm_stay_awake(dev);
}

void vbrs_helper_pm_relax(struct device *dev)
{
	pm_relax(dev);
}
