/* derive.h - what a configuration implies for the net_dev_queue program, computed once. */
#ifndef NDQ_DERIVE_H
#define NDQ_DERIVE_H

#include <linux/types.h>

#include "netdevq.h"

/* Fills cfg->derived (NDQ_DERIVED_*) and cfg->event_size from the other members: the last
 * change to cfg before it goes into .rodata. */
void ndq_derive(struct netdevq_config *cfg);

#endif /* NDQ_DERIVE_H */
