/* A tenant moved: its open streams end, so that their clients reconnect to
 * its new place.
 *
 * SSE and WebSocket connections to a tenant's backend can stay open for
 * hours; a control plane that moves the tenant to another node (a new
 * `servers` in the directory, announced on PREFIXchanged) wants them gone
 * from the old node. When the directory says a tenant may have moved, each
 * worker looks the tenant up again and ends, politely, the streams of its
 * own that are on a server the tenant no longer lists (or of a tenant that
 * is gone or suspended): SSE at the next event boundary after a retry hint,
 * WebSocket with a close frame each way, as at a drain; whatever has not
 * ended after tenants.move_grace is cut. Plain requests in flight finish. */
#ifndef TG_TENANT_MOVES_H
#define TG_TENANT_MOVES_H

/* The directory's change callback (tg_tenant_dir_on_change); `arg` is the
 * worker's struct tg_context. */
void tg_tenant_moves_changed(void *arg, const char *id);

#endif
