/* PROXY protocol v1 (text) and v2 (binary) headers, as sent by load
 * balancers (HAProxy, AWS NLB) ahead of the client's bytes to carry the
 * original client address. Pure and strict: no I/O, no allocation. */
#ifndef TG_PROXY_PROTOCOL_H
#define TG_PROXY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "addr.h"

enum {
    TG_PROXY_PROTOCOL_INCOMPLETE = 0,
    TG_PROXY_PROTOCOL_ERROR = -1,
};

struct tg_proxy_protocol {
    int version;             /* 1 or 2 */
    bool local;              /* v2 LOCAL command / v1 UNKNOWN: keep the peer */
    struct tg_addr src, dst; /* valid unless local */
    uint16_t src_port, dst_port;
};

/* Parses the header at buf[0..len). Returns its length (> 0) once complete
 * (the client's bytes follow it), TG_PROXY_PROTOCOL_INCOMPLETE if more bytes
 * are needed, or TG_PROXY_PROTOCOL_ERROR with `*reason` set when the bytes
 * are not a valid header (wrong signature, v1 line over 107 bytes or
 * malformed fields, v2 bad version/command/family or length, address
 * family mismatch, ports out of range). v2 TLVs are skipped (bounded by the
 * header length). Only TCP over IPv4/IPv6 and LOCAL are accepted. The
 * signature is checked on the first bytes as soon as they arrive, so a
 * client that does not speak the protocol is refused at once. */
ssize_t tg_proxy_protocol_parse(const char *buf, size_t len,
                                struct tg_proxy_protocol *out,
                                const char **reason);

#endif
