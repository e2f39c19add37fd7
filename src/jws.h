/* JOSE for ACME (RFC 7515, 7517, 7638, RFC 8555 section 6.2): base64url,
 * ES256 account keys and their JWK and thumbprint, flattened JWS bodies
 * (with the JWK for a new account, with the key id after), the External
 * Account Binding, and certificate keys and CSRs. OpenSSL does the
 * cryptography. Any thread. */
#ifndef TG_JWS_H
#define TG_JWS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* Unpadded base64url of n bytes into out (room for 4 * (n + 2) / 3 + 1);
 * NUL-terminated. Returns the length. */
size_t tg_b64url(char *out, const void *in, size_t n);
/* Decodes unpadded (or padded) base64url. Returns the length, or -1. */
long tg_b64url_decode(unsigned char *out, size_t cap, const char *in, size_t n);

/* Key types for certificates (accounts are always ECDSA P-256). */
enum tg_jws_key_type { TG_KEY_ECDSA_P256 = 0, TG_KEY_RSA_2048 };

/* A new private key; NULL when OpenSSL fails. */
EVP_PKEY *tg_jws_key_new(enum tg_jws_key_type type);
/* The key as unencrypted PEM (PKCS#8), malloc'd, NUL-terminated. */
char *tg_jws_key_pem(EVP_PKEY *k);
/* A key from PEM; NULL when it is not one. */
EVP_PKEY *tg_jws_key_from_pem(const char *pem, size_t n);

/* The public JWK of a P-256 key, members in RFC 7638's order (so it is
 * also the thumbprint's input). Returns the length, or -1. */
int tg_jws_jwk(EVP_PKEY *k, char *out, size_t cap);
/* The key's RFC 7638 thumbprint, base64url (43 characters + NUL). */
int tg_jws_thumbprint(EVP_PKEY *k, char out[48]);

/* A flattened JWS JSON body signed with ES256: the protected header names
 * `url` and `nonce`, and `kid` (or, when NULL, the JWK itself); `payload`
 * (JSON text) NULL is POST-as-GET (an empty payload). The body is malloc'd
 * and NUL-terminated; NULL on failure. */
char *tg_jws_sign(EVP_PKEY *k, const char *kid, const char *nonce, const char *url,
                  const char *payload);

/* The External Account Binding JWS (RFC 8555 7.3.4): HS256 with the CA's
 * MAC key (base64url) over the account's JWK, as a JSON object. malloc'd;
 * NULL on failure. */
char *tg_jws_eab(const char *kid, const char *mac_key_b64url, EVP_PKEY *account, const char *url);

/* A CSR for `name` (subjectAltName dNSName), DER, base64url, malloc'd. */
char *tg_jws_csr(EVP_PKEY *k, const char *name);

/* A certificate's ACME Renewal Information id (RFC 9773 section 4.1):
 * base64url(authority key identifier) "." base64url(serial number's DER
 * content octets). Returns the length, or -1 (no AKI key id, or no room). */
int tg_jws_ari_cert_id(const X509 *cert, char *out, size_t cap);

#endif
