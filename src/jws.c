/* JOSE for ACME (jws.h). */
#include "jws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "codec.h"

/* A P-256 coordinate, and an ES256 signature (r || s). */
#define P256_BYTES 32
#define ES256_SIG_BYTES 64
#define RSA_BITS 2048

size_t tg_b64url(char *out, const void *in, size_t n)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)p[i] << 16;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-' || c == '+')
        return 62;
    if (c == '_' || c == '/')
        return 63;
    return -1;
}

long tg_b64url_decode(unsigned char *out, size_t cap, const char *in, size_t n)
{
    while (n > 0 && in[n - 1] == '=')
        n--;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    return (long)o;
}

/* ---- keys ------------------------------------------------------------------------ */

EVP_PKEY *tg_jws_key_new(enum tg_jws_key_type type)
{
    EVP_PKEY *k = type == TG_KEY_RSA_2048 ? EVP_RSA_gen(RSA_BITS) : EVP_EC_gen(SN_X9_62_prime256v1);
    if (k == NULL)
        ERR_clear_error();
    return k;
}

char *tg_jws_key_pem(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b != NULL && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        out = malloc((size_t)n + 1);
        if (out != NULL) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return out;
}

EVP_PKEY *tg_jws_key_from_pem(const char *pem, size_t n)
{
    BIO *b = BIO_new_mem_buf(pem, (int)n);
    EVP_PKEY *k = b != NULL ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    return k;
}

/* The key's public point as x and y, 32 bytes each. */
static int ec_xy(EVP_PKEY *k, unsigned char x[P256_BYTES], unsigned char y[P256_BYTES])
{
    BIGNUM *bx = NULL, *by = NULL;
    int rc = -1;
    if (EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, &bx) == 1 &&
        EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, &by) == 1 &&
        BN_bn2binpad(bx, x, P256_BYTES) == P256_BYTES &&
        BN_bn2binpad(by, y, P256_BYTES) == P256_BYTES)
        rc = 0;
    BN_free(bx);
    BN_free(by);
    ERR_clear_error();
    return rc;
}

int tg_jws_jwk(EVP_PKEY *k, char *out, size_t cap)
{
    unsigned char x[P256_BYTES], y[P256_BYTES];
    if (ec_xy(k, x, y) < 0)
        return -1;
    char xs[48], ys[48];
    tg_b64url(xs, x, sizeof(x));
    tg_b64url(ys, y, sizeof(y));
    int n =
        snprintf(out, cap, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", xs, ys);
    return n > 0 && (size_t)n < cap ? n : -1;
}

int tg_jws_thumbprint(EVP_PKEY *k, char out[48])
{
    char jwk[256];
    int n = tg_jws_jwk(k, jwk, sizeof(jwk));
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (n < 0 || EVP_Digest(jwk, (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1)
        return -1;
    tg_b64url(out, md, mdlen);
    return 0;
}

/* ---- signatures ---------------------------------------------------------------------- */

/* ES256 over data: the raw r || s JWS wants (OpenSSL gives DER). */
static int es256(EVP_PKEY *k, const char *data, size_t n, unsigned char sig[ES256_SIG_BYTES])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dlen = sizeof(der);
    int rc = -1;
    if (md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
        EVP_DigestSign(md, der, &dlen, (const unsigned char *)data, n) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
        if (s != NULL) {
            const BIGNUM *r, *sv;
            ECDSA_SIG_get0(s, &r, &sv);
            if (BN_bn2binpad(r, sig, P256_BYTES) == P256_BYTES &&
                BN_bn2binpad(sv, sig + P256_BYTES, P256_BYTES) == P256_BYTES)
                rc = 0;
            ECDSA_SIG_free(s);
        }
    }
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return rc;
}

/* "protected.payload" signed by `sign` into a flattened JWS object. */
static char *flattened(const char *protected_json, const char *payload, bool hs256,
                       const unsigned char *hmac_key, size_t hmac_len, EVP_PKEY *k)
{
    size_t pn = strlen(protected_json), yn = strlen(payload);
    char *prot = malloc(4 * (pn + 2) / 3 + 4);
    char *pay = malloc(4 * (yn + 2) / 3 + 4);
    char *signing = NULL, *out = NULL;
    if (prot == NULL || pay == NULL)
        goto done;
    size_t a = tg_b64url(prot, protected_json, pn);
    size_t b = tg_b64url(pay, payload, yn);
    signing = malloc(a + b + 2);
    if (signing == NULL)
        goto done;
    memcpy(signing, prot, a);
    signing[a] = '.';
    memcpy(signing + a + 1, pay, b + 1);
    unsigned char sig[EVP_MAX_MD_SIZE > ES256_SIG_BYTES ? EVP_MAX_MD_SIZE : ES256_SIG_BYTES];
    size_t slen;
    if (hs256) {
        unsigned int hl = 0;
        if (HMAC(EVP_sha256(), hmac_key, (int)hmac_len, (const unsigned char *)signing, a + b + 1,
                 sig, &hl) == NULL)
            goto done;
        slen = hl;
    } else {
        if (es256(k, signing, a + b + 1, sig) < 0)
            goto done;
        slen = ES256_SIG_BYTES;
    }
    char sigs[128];
    tg_b64url(sigs, sig, slen);
    size_t cap = a + b + strlen(sigs) + 64;
    out = malloc(cap);
    if (out != NULL)
        snprintf(out, cap, "{\"protected\":\"%s\",\"payload\":\"%s\",\"signature\":\"%s\"}", prot,
                 pay, sigs);
done:
    free(prot);
    free(pay);
    free(signing);
    return out;
}

char *tg_jws_sign(EVP_PKEY *k, const char *kid, const char *nonce, const char *url,
                  const char *payload)
{
    char header[1024];
    int n;
    if (kid != NULL) {
        n = snprintf(header, sizeof(header),
                     "{\"alg\":\"ES256\",\"kid\":\"%s\",\"nonce\":\"%s\",\"url\":\"%s\"}", kid,
                     nonce, url);
    } else {
        char jwk[256];
        if (tg_jws_jwk(k, jwk, sizeof(jwk)) < 0)
            return NULL;
        n = snprintf(header, sizeof(header),
                     "{\"alg\":\"ES256\",\"jwk\":%s,\"nonce\":\"%s\",\"url\":\"%s\"}", jwk, nonce,
                     url);
    }
    if (n < 0 || (size_t)n >= sizeof(header))
        return NULL;
    return flattened(header, payload != NULL ? payload : "", false, NULL, 0, k);
}

char *tg_jws_eab(const char *kid, const char *mac_key_b64url, EVP_PKEY *account, const char *url)
{
    unsigned char key[256];
    long kn = tg_b64url_decode(key, sizeof(key), mac_key_b64url, strlen(mac_key_b64url));
    char jwk[256], header[1024];
    if (kn <= 0 || tg_jws_jwk(account, jwk, sizeof(jwk)) < 0)
        return NULL;
    int n = snprintf(header, sizeof(header), "{\"alg\":\"HS256\",\"kid\":\"%s\",\"url\":\"%s\"}",
                     kid, url);
    if (n < 0 || (size_t)n >= sizeof(header))
        return NULL;
    return flattened(header, jwk, true, key, (size_t)kn, NULL);
}

char *tg_jws_csr(EVP_PKEY *k, const char *name)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *subj = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    char *out = NULL;
    unsigned char *der = NULL;
    if (req == NULL || subj == NULL || exts == NULL)
        goto done;
    char san[300];
    snprintf(san, sizeof(san), "DNS:%s", name);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
    if (ext == NULL || !sk_X509_EXTENSION_push(exts, ext)) {
        X509_EXTENSION_free(ext);
        goto done;
    }
    if (X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1,
                                   0) != 1 ||
        X509_REQ_set_subject_name(req, subj) != 1 || X509_REQ_set_pubkey(req, k) != 1 ||
        X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_sign(req, k, EVP_sha256()) <= 0)
        goto done;
    int n = i2d_X509_REQ(req, &der);
    if (n <= 0)
        goto done;
    out = malloc(4 * ((size_t)n + 2) / 3 + 4);
    if (out != NULL)
        tg_b64url(out, der, (size_t)n);
done:
    OPENSSL_free(der);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(subj);
    X509_REQ_free(req);
    ERR_clear_error();
    return out;
}

int tg_jws_ari_cert_id(const X509 *cert, char *out, size_t cap)
{
    AUTHORITY_KEYID *akid = X509_get_ext_d2i(cert, NID_authority_key_identifier, NULL, NULL);
    const ASN1_OCTET_STRING *aki = akid != NULL ? akid->keyid : NULL;
    const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
    if (aki == NULL || serial == NULL) {
        AUTHORITY_KEYID_free(akid);
        return -1;
    }
    /* The serial's content octets as DER has them: a positive number with
     * its top bit set gets a leading zero byte. */
    unsigned char *der = NULL;
    int dn = i2d_ASN1_INTEGER((ASN1_INTEGER *)serial, &der);
    if (dn < 3) {
        OPENSSL_free(der);
        AUTHORITY_KEYID_free(akid);
        return -1;
    }
    /* Skip the tag and the (short or long form) length. */
    size_t hdr = 2;
    if (der[1] & 0x80)
        hdr += der[1] & 0x7f;
    size_t sn = (size_t)dn - hdr, an = (size_t)ASN1_STRING_length(aki);
    int rc = -1;
    if (hdr < (size_t)dn && 4 * (an + 2) / 3 + 1 + 4 * (sn + 2) / 3 + 1 <= cap) {
        size_t o = tg_b64url(out, ASN1_STRING_get0_data(aki), an);
        out[o++] = '.';
        o += tg_b64url(out + o, der + hdr, sn);
        rc = (int)o;
    }
    OPENSSL_free(der);
    AUTHORITY_KEYID_free(akid);
    return rc;
}
