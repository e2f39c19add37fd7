/* JOSE and ACME encodings (src/jws.c): base64url both ways, the ES256
 * JWS a CA verifies, the RFC 7638 thumbprint, CSRs, and the ACME Renewal
 * Information id of a certificate (RFC 9773's own example). The protocol
 * end to end is tests/integration/test_acme.py against pebble. */
#include "../../src/jws.c"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/x509v3.h>

#include "test.h"

TEST(b64url_round_trip)
{
    char out[64];
    unsigned char back[64];
    CHECK_EQ_INT(tg_b64url(out, "\xfb\xff", 2), 3);
    CHECK_EQ_STR(out, "-_8");
    CHECK_EQ_INT(tg_b64url(out, "abc", 3), 4);
    CHECK_EQ_STR(out, "YWJj");
    CHECK_EQ_INT(tg_b64url_decode(back, sizeof(back), "-_8", 3), 2);
    CHECK(memcmp(back, "\xfb\xff", 2) == 0);
    CHECK_EQ_INT(tg_b64url_decode(back, sizeof(back), "YWJj", 4), 3);
    CHECK(tg_b64url_decode(back, sizeof(back), "a$bc", 4) < 0);
    CHECK(tg_b64url_decode(back, 1, "YWJj", 4) < 0); /* no room */
}

/* The JWS verifies with the account's public key over
 * base64url(protected) "." base64url(payload), and names url and nonce. */
TEST(jws_verifies)
{
    EVP_PKEY *k = tg_jws_key_new(TG_KEY_ECDSA_P256);
    CHECK(k != NULL);
    char *body = tg_jws_sign(k, NULL, "nonce-1", "https://ca/new-acct", "{\"a\":1}");
    CHECK(body != NULL);
    /* Pull the three members out by hand. */
    char prot[512], payload[512], sig[512];
    CHECK(sscanf(body,
                 "{\"protected\":\"%511[^\"]\",\"payload\":\"%511[^\"]\","
                 "\"signature\":\"%511[^\"]\"}",
                 prot, payload, sig) == 3);
    unsigned char hdr[512];
    long hn = tg_b64url_decode(hdr, sizeof(hdr) - 1, prot, strlen(prot));
    CHECK(hn > 0);
    hdr[hn > 0 ? hn : 0] = '\0';
    CHECK(strstr((char *)hdr, "\"alg\":\"ES256\"") != NULL);
    CHECK(strstr((char *)hdr, "\"nonce\":\"nonce-1\"") != NULL);
    CHECK(strstr((char *)hdr, "\"url\":\"https://ca/new-acct\"") != NULL);
    CHECK(strstr((char *)hdr, "\"jwk\":") != NULL);
    unsigned char raw[64];
    CHECK_EQ_INT(tg_b64url_decode(raw, sizeof(raw), sig, strlen(sig)), 64);
    /* R || S to DER, then verify over the signing input. */
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    unsigned char *der = NULL;
    int dn = i2d_ECDSA_SIG(es, &der);
    char input[1100];
    snprintf(input, sizeof(input), "%s.%s", prot, payload);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1);
    CHECK(EVP_DigestVerify(md, der, (size_t)dn, (unsigned char *)input, strlen(input)) == 1);
    /* One bit off: refused. */
    input[0] ^= 1;
    CHECK(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1);
    CHECK(EVP_DigestVerify(md, der, (size_t)dn, (unsigned char *)input, strlen(input)) != 1);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    free(body);
    /* With a key id: the kid, no jwk; POST-as-GET has an empty payload. */
    body = tg_jws_sign(k, "https://ca/acct/1", "n2", "https://ca/order", NULL);
    CHECK(body != NULL && strstr(body, "\"payload\":\"\"") != NULL);
    free(body);
    char tp[48];
    CHECK(tg_jws_thumbprint(k, tp) >= 0);
    CHECK_EQ_INT(strlen(tp), 43);
    EVP_PKEY_free(k);
}

/* RFC 9773 section 4.1: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:
 * DE:01:C8:D4 and serial 0x87654321 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
 * (the serial's DER content has a leading zero: its top bit is set). */
TEST(ari_cert_id)
{
    static const unsigned char keyid[] = {0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40,
                                          0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
                                          0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4};
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    BN_hex2bn(&bn, "87654321");
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(akid->keyid, keyid, sizeof(keyid));
    CHECK(X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, 0) == 1);
    AUTHORITY_KEYID_free(akid);
    char id[200];
    CHECK(tg_jws_ari_cert_id(x, id, sizeof(id)) > 0);
    CHECK_EQ_STR(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
    CHECK_EQ_INT(tg_jws_ari_cert_id(x, id, 20), -1); /* no room */
    X509_free(x);
    /* No authority key identifier: no id. */
    x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    CHECK_EQ_INT(tg_jws_ari_cert_id(x, id, sizeof(id)), -1);
    X509_free(x);
}

TEST(csr_names_the_host)
{
    EVP_PKEY *k = tg_jws_key_new(TG_KEY_ECDSA_P256);
    char *csr = tg_jws_csr(k, "app.example.com");
    CHECK(csr != NULL);
    unsigned char der[2048];
    long n = tg_b64url_decode(der, sizeof(der), csr, strlen(csr));
    CHECK(n > 0);
    const unsigned char *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, n);
    CHECK(req != NULL);
    CHECK(X509_REQ_verify(req, k) == 1);
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    GENERAL_NAMES *san = NULL;
    for (int i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
        X509_EXTENSION *e = sk_X509_EXTENSION_value(exts, i);
        if (OBJ_obj2nid(X509_EXTENSION_get_object(e)) == NID_subject_alt_name)
            san = X509V3_EXT_d2i(e);
    }
    CHECK(san != NULL && sk_GENERAL_NAME_num(san) == 1);
    if (san != NULL) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, 0);
        CHECK(g->type == GEN_DNS);
        CHECK_EQ_STR((const char *)ASN1_STRING_get0_data(g->d.dNSName), "app.example.com");
        GENERAL_NAMES_free(san);
    }
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    free(csr);
    EVP_PKEY_free(k);
}

int main(void)
{
    RUN(b64url_round_trip);
    RUN(jws_verifies);
    RUN(ari_cert_id);
    RUN(csr_names_the_host);
    return TEST_SUMMARY();
}
