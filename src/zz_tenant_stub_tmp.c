/* Placeholder until the tenant directory module lands (next commits). */
#include <string.h>
#include "tenant.h"
int tg_tenant_index_build(struct tg_config *cfg, char *err, size_t errlen) { (void)cfg; (void)err; (void)errlen; return 0; }
void tg_tenant_index_free(struct tg_tenant_index *ix) { (void)ix; }
void tg_tenant_dir_stats(const struct tg_tenant_dir *d, struct tg_tenant_stats *out) { (void)d; memset(out, 0, sizeof(*out)); }
