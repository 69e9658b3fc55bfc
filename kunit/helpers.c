// SPDX-License-Identifier: GPL-2.0
/* The KUnit module links its own copy of the driver's C helpers. */
#include "../kapi/helpers.c"
