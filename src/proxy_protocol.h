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

/* The longest header accepted, in bytes: a v1 line is at most 107, a v2
 * header at most this (16-byte head, addresses, TLVs), far above what load
 * balancers send and well inside one standard connection buffer. A caller
 * that has buffered this many bytes without a result has an error. */
#define TG_PROXY_PROTOCOL_MAX 4096

/* Parses the header at buf[0..len). Returns its length (> 0) once complete
 * (the client's bytes follow it and are not looked at),
 * TG_PROXY_PROTOCOL_INCOMPLETE if more bytes are needed, or
 * TG_PROXY_PROTOCOL_ERROR with `*reason` set (a static string; reason may
 * be NULL) when the bytes are not a valid header (wrong signature, v1 line
 * over 107 bytes or malformed fields, v2 bad version/command/family or
 * length, address family mismatch, ports out of range). `out` is written
 * only on success. v1: "PROXY TCP4|TCP6 src dst sport dport\r\n" with
 * single spaces, bare addresses of the named family, ports 0-65535 without
 * leading zeros; "PROXY UNKNOWN" may be followed by " " and any bytes but
 * CR/LF up to the CRLF.
 * v2: command LOCAL or PROXY; family TCP over IPv4/IPv6 (UNSPEC only with
 * LOCAL); TLVs are skipped but must tile the header exactly. LOCAL and
 * UNKNOWN set `local` and leave the addresses zero. Every byte is checked as
 * soon as it arrives (signature, v1 protocol word and field characters, v2
 * version, command, family, length), so a client that does not speak the
 * protocol is refused at once, and a prefix of a valid header is always
 * INCOMPLETE. Pure; any thread. */
ssize_t tg_proxy_protocol_parse(const char *buf, size_t len, struct tg_proxy_protocol *out,
                                const char **reason);

#endif
