/*
 * Tests of the tokentls OpenSSL provider without a token: the sign callback
 * signs with in-memory private keys loaded from PEM files.
 *
 * Usage: provider_test DIR PORT
 *   DIR  contains ca.crt, server.crt and client-{rsa,p256,p384,p521}.{crt,key}
 *   PORT is an "openssl s_server -www -Verify 1 -verify_return_error" on
 *        127.0.0.1 that trusts ca.crt for client certificates.
 * Prints one line per failed check and ends with "N passed, N failed".
 */
#include "tokentls_provider.h"
#include "../../Sources/CTokenProvider/tokentls_provider_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* ------------------------------------------------------------------------ */
/* Check bookkeeping                                                          */
/* ------------------------------------------------------------------------ */

static int checks_passed;
static int checks_failed;

/* Records one check; on failure prints its name and the OpenSSL error queue. */
static void check(int ok, const char *fmt, ...)
{
    va_list args;

    if (ok) {
        checks_passed++;
        return;
    }
    checks_failed++;
    printf("FAIL: ");
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    printf("\n");
    ERR_print_errors_fp(stdout);
}

/* Reports whether an error in the queue contains needle in its text, then clears the queue. */
static int error_queue_contains(const char *needle)
{
    unsigned long code;
    const char *data = NULL;
    int flags = 0;
    int found = 0;
    char text[512];

    while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        ERR_error_string_n(code, text, sizeof(text));
        if (strstr(text, needle) != NULL)
            found = 1;
        if (data != NULL && (flags & ERR_TXT_STRING) != 0 && strstr(data, needle) != NULL)
            found = 1;
    }
    return found;
}

static const char *provider_name_of_key(const EVP_PKEY *key)
{
    const OSSL_PROVIDER *provider = key != NULL ? EVP_PKEY_get0_provider(key) : NULL;

    return provider != NULL ? OSSL_PROVIDER_get0_name(provider) : "(none)";
}

/* ------------------------------------------------------------------------ */
/* Test keys and the sign callback                                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *name;          /* file name stem: client-<name>.crt/.key */
    const char *common_name;   /* subject CN in the certificate */
    uint64_t key_ref;
    size_t order_len;          /* 0 for RSA */
    X509 *cert;
    EVP_PKEY *private_key;     /* in memory, replaces the token */
    EVP_PKEY *token_key;       /* built by tokentls_provider_new_key */
} test_key;

static test_key test_keys[] = {
    { "rsa", "tokentls-client-rsa", 101, 0, NULL, NULL, NULL },
    { "p256", "tokentls-client-p256", 102, 32, NULL, NULL, NULL },
    { "p384", "tokentls-client-p384", 103, 48, NULL, NULL, NULL },
    { "p521", "tokentls-client-p521", 104, 66, NULL, NULL, NULL },
};
#define TEST_KEY_COUNT (sizeof(test_keys) / sizeof(test_keys[0]))
enum { KEY_RSA, KEY_P256, KEY_P384, KEY_P521 };

/* Second reference to the P-384 key, used by the EVP_PKEY_dup test. */
#define DUP_TEST_KEY_REF 555

static atomic_int sign_calls;
static atomic_int last_scheme;
static atomic_int last_digest_nid;
/* When set, ECDSA signatures are returned as DER instead of r||s. */
static atomic_int ecdsa_returns_der;
/* When set, the sign callback fails. */
static atomic_int signing_fails;

static atomic_int release_calls;
static _Atomic uint64_t last_released_ref;

static test_key *find_test_key(uint64_t key_ref)
{
    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        if (test_keys[i].key_ref == key_ref)
            return &test_keys[i];
    }
    return key_ref == DUP_TEST_KEY_REF ? &test_keys[KEY_P384] : NULL;
}

/* Splits a DER ECDSA-Sig-Value into r||s, each half order_len bytes, as PKCS#11 tokens return it. */
static int der_to_raw_ecdsa(const unsigned char *der, size_t der_len, size_t order_len,
                            unsigned char *raw)
{
    const unsigned char *cursor = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &cursor, (long)der_len);
    const BIGNUM *r, *s;
    int ok;

    if (sig == NULL)
        return 0;
    ECDSA_SIG_get0(sig, &r, &s);
    ok = BN_bn2binpad(r, raw, (int)order_len) == (int)order_len
         && BN_bn2binpad(s, raw + order_len, (int)order_len) == (int)order_len;
    ECDSA_SIG_free(sig);
    return ok;
}

static int test_sign(uint64_t key_ref, int scheme, int digest_nid, const unsigned char *digest,
                     size_t digest_len, unsigned char *signature, size_t *signature_len)
{
    test_key *key = find_test_key(key_ref);
    EVP_PKEY_CTX *ctx = NULL;
    const EVP_MD *md = EVP_get_digestbynid(digest_nid);
    unsigned char buffer[1024];
    size_t buffer_len = sizeof(buffer);
    int ok = 0;

    atomic_fetch_add(&sign_calls, 1);
    atomic_store(&last_scheme, scheme);
    atomic_store(&last_digest_nid, digest_nid);
    if (atomic_load(&signing_fails) || key == NULL || md == NULL)
        return 0;
    if ((size_t)EVP_MD_get_size(md) != digest_len)
        return 0;

    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->private_key, NULL);
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0 || EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0)
        goto end;
    switch (scheme) {
    case TOKENTLS_SCHEME_RSA_PKCS1:
        /* With a signature digest set, OpenSSL adds the DigestInfo prefix itself. */
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            goto end;
        break;
    case TOKENTLS_SCHEME_RSA_PSS:
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0
            || EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, RSA_PSS_SALTLEN_DIGEST) <= 0
            || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0)
            goto end;
        break;
    case TOKENTLS_SCHEME_ECDSA:
        break;
    default:
        goto end;
    }
    if (EVP_PKEY_sign(ctx, buffer, &buffer_len, digest, digest_len) <= 0)
        goto end;

    if (scheme == TOKENTLS_SCHEME_ECDSA && !atomic_load(&ecdsa_returns_der)) {
        if (*signature_len < 2 * key->order_len
            || !der_to_raw_ecdsa(buffer, buffer_len, key->order_len, signature))
            goto end;
        *signature_len = 2 * key->order_len;
    } else {
        if (*signature_len < buffer_len)
            goto end;
        memcpy(signature, buffer, buffer_len);
        *signature_len = buffer_len;
    }
    ok = 1;

end:
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static void test_release(uint64_t key_ref)
{
    atomic_fetch_add(&release_calls, 1);
    atomic_store(&last_released_ref, key_ref);
}

/* ------------------------------------------------------------------------ */
/* r||s to DER conversion                                                     */
/* ------------------------------------------------------------------------ */

/* Builds r||s from the given first bytes of each half, filling the rest with fill bytes. */
static void make_raw(unsigned char *raw, size_t order_len, const unsigned char *r_head,
                     size_t r_head_len, const unsigned char *s_head, size_t s_head_len,
                     unsigned char fill)
{
    memset(raw, fill, 2 * order_len);
    memcpy(raw, r_head, r_head_len);
    memcpy(raw + order_len, s_head, s_head_len);
}

/* Converts and compares against the expected DER INTEGER contents of r and s. */
static void check_conversion(const char *name, const unsigned char *raw, size_t order_len,
                             const unsigned char *r_content, size_t r_len,
                             const unsigned char *s_content, size_t s_len)
{
    unsigned char expected[256];
    size_t expected_len = 0;
    size_t body_len = 2 + r_len + 2 + s_len;
    unsigned char der[256];
    size_t der_len = 0;
    unsigned char again[256];
    size_t again_len = 0;

    expected[expected_len++] = 0x30;
    if (body_len >= 128)
        expected[expected_len++] = 0x81;
    expected[expected_len++] = (unsigned char)body_len;
    expected[expected_len++] = 0x02;
    expected[expected_len++] = (unsigned char)r_len;
    memcpy(expected + expected_len, r_content, r_len);
    expected_len += r_len;
    expected[expected_len++] = 0x02;
    expected[expected_len++] = (unsigned char)s_len;
    memcpy(expected + expected_len, s_content, s_len);
    expected_len += s_len;

    check(tokentls_ecdsa_signature_to_der(raw, 2 * order_len, order_len, der, sizeof(der), &der_len),
          "%s: conversion succeeds", name);
    check(der_len == expected_len && memcmp(der, expected, expected_len) == 0,
          "%s: DER bytes match (got %zu bytes, expected %zu)", name, der_len, expected_len);

    /* A DER input is passed through unchanged. */
    check(tokentls_ecdsa_signature_to_der(expected, expected_len, order_len, again, sizeof(again),
                                          &again_len)
              && again_len == expected_len && memcmp(again, expected, expected_len) == 0,
          "%s: DER input passes through unchanged", name);

    /* One byte too small a buffer is rejected. */
    check(!tokentls_ecdsa_signature_to_der(raw, 2 * order_len, order_len, der, expected_len - 1,
                                           &der_len),
          "%s: short output buffer is rejected", name);
    ERR_clear_error();
}

static void test_ecdsa_conversion(void)
{
    unsigned char raw[132];
    unsigned char r_content[67], s_content[67];
    unsigned char der[256];
    size_t der_len;

    /* P-256: r starts with two zero bytes then 0x7f, so it shrinks to 30 bytes without
       padding. s starts with 0x80, so it needs a 0x00 byte to stay positive. */
    {
        const unsigned char r_head[] = { 0x00, 0x00, 0x7f };
        const unsigned char s_head[] = { 0x80 };

        make_raw(raw, 32, r_head, sizeof(r_head), s_head, sizeof(s_head), 0xa5);
        memcpy(r_content, raw + 2, 30);
        s_content[0] = 0x00;
        memcpy(s_content + 1, raw + 32, 32);
        check_conversion("P-256 leading zeros and high bit", raw, 32, r_content, 30, s_content, 33);
    }

    /* P-256: r has one zero byte followed by a byte with the high bit set, so the zero
       byte stays as the sign byte. s is all 0xff and needs padding. */
    {
        const unsigned char r_head[] = { 0x00, 0x80 };
        const unsigned char s_head[] = { 0xff };

        make_raw(raw, 32, r_head, sizeof(r_head), s_head, sizeof(s_head), 0xff);
        memcpy(r_content, raw, 32);
        s_content[0] = 0x00;
        memcpy(s_content + 1, raw + 32, 32);
        check_conversion("P-256 zero byte kept as sign byte", raw, 32, r_content, 32, s_content, 33);
    }

    /* P-256: r starts like a DER header (30 3e 02 ...) but is not DER, so it is r||s. */
    {
        const unsigned char r_head[] = { 0x30, 0x3e, 0x02, 0x1d };
        const unsigned char s_head[] = { 0x01 };

        make_raw(raw, 32, r_head, sizeof(r_head), s_head, sizeof(s_head), 0x11);
        memcpy(r_content, raw, 32);
        memcpy(s_content, raw + 32, 32);
        check_conversion("P-256 r||s that looks like DER", raw, 32, r_content, 32, s_content, 32);
    }

    /* P-384: both halves have the high bit set. */
    {
        const unsigned char r_head[] = { 0xc0 };
        const unsigned char s_head[] = { 0x81 };

        make_raw(raw, 48, r_head, sizeof(r_head), s_head, sizeof(s_head), 0x5a);
        r_content[0] = 0x00;
        memcpy(r_content + 1, raw, 48);
        s_content[0] = 0x00;
        memcpy(s_content + 1, raw + 48, 48);
        check_conversion("P-384 high bits", raw, 48, r_content, 49, s_content, 49);
    }

    /* P-521: 66-byte halves give a body over 127 bytes, so the length uses the long form.
       s has eight leading zero bytes. */
    {
        const unsigned char r_head[] = { 0x01, 0xff };
        const unsigned char s_head[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0x90 };

        make_raw(raw, 66, r_head, sizeof(r_head), s_head, sizeof(s_head), 0x77);
        memcpy(r_content, raw, 66);
        s_content[0] = 0x00;
        memcpy(s_content + 1, raw + 66 + 8, 58);
        check_conversion("P-521 long form and leading zeros", raw, 66, r_content, 66, s_content, 59);
    }

    /* Malformed inputs. */
    memset(raw, 0x42, sizeof(raw));
    check(!tokentls_ecdsa_signature_to_der(raw, 63, 32, der, sizeof(der), &der_len),
          "63-byte P-256 signature is rejected");
    memset(raw, 0, 32);
    check(!tokentls_ecdsa_signature_to_der(raw, 64, 32, der, sizeof(der), &der_len),
          "r equal to 0 is rejected");
    {
        /* Non-minimal DER length (0x81 for a short body) is neither DER nor r||s. */
        unsigned char bad[71] = { 0x30, 0x81, 0x44, 0x02, 0x20 };

        memset(bad + 5, 0x11, 32);
        bad[37] = 0x02;
        bad[38] = 0x20;
        memset(bad + 39, 0x22, 32);
        check(!tokentls_ecdsa_signature_to_der(bad, sizeof(bad), 32, der, sizeof(der), &der_len),
              "non-canonical DER is rejected");
    }
    ERR_clear_error();
}

/* ------------------------------------------------------------------------ */
/* Provider selection                                                         */
/* ------------------------------------------------------------------------ */

/* Builds a public key from cert's key with an unqualified fetch and returns its provider name. */
static const char *provider_of_unqualified_fromdata(const char *type_name, X509 *cert)
{
    static char name[64];
    EVP_PKEY *source = X509_get0_pubkey(cert);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type_name, NULL);
    OSSL_PARAM *params = NULL;
    EVP_PKEY *key = NULL;

    snprintf(name, sizeof(name), "(failed)");
    if (ctx != NULL && EVP_PKEY_todata(source, EVP_PKEY_PUBLIC_KEY, &params) == 1
        && EVP_PKEY_fromdata_init(ctx) == 1
        && EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1)
        snprintf(name, sizeof(name), "%s", provider_name_of_key(key));
    EVP_PKEY_free(key);
    OSSL_PARAM_free(params);
    EVP_PKEY_CTX_free(ctx);
    return name;
}

static void test_unqualified_fetches(void)
{
    EVP_SIGNATURE *signature;
    EVP_KEYMGMT *keymgmt;
    const char *provider;

    provider = provider_of_unqualified_fromdata("RSA", test_keys[KEY_RSA].cert);
    check(strcmp(provider, "default") == 0, "unqualified RSA key management is from %s", provider);
    provider = provider_of_unqualified_fromdata("EC", test_keys[KEY_P256].cert);
    check(strcmp(provider, "default") == 0, "unqualified EC key management is from %s", provider);

    signature = EVP_SIGNATURE_fetch(NULL, "RSA", NULL);
    provider = signature != NULL ? OSSL_PROVIDER_get0_name(EVP_SIGNATURE_get0_provider(signature))
                                 : "(none)";
    check(strcmp(provider, "default") == 0, "unqualified RSA signature is from %s", provider);
    EVP_SIGNATURE_free(signature);

    signature = EVP_SIGNATURE_fetch(NULL, "ECDSA", NULL);
    provider = signature != NULL ? OSSL_PROVIDER_get0_name(EVP_SIGNATURE_get0_provider(signature))
                                 : "(none)";
    check(strcmp(provider, "default") == 0, "unqualified ECDSA signature is from %s", provider);
    EVP_SIGNATURE_free(signature);

    keymgmt = EVP_KEYMGMT_fetch(NULL, "EC", NULL);
    provider = keymgmt != NULL ? OSSL_PROVIDER_get0_name(EVP_KEYMGMT_get0_provider(keymgmt))
                               : "(none)";
    check(strcmp(provider, "default") == 0, "unqualified EC EVP_KEYMGMT_fetch is from %s", provider);
    EVP_KEYMGMT_free(keymgmt);

    signature = EVP_SIGNATURE_fetch(NULL, "ECDSA", "provider=tokentls");
    check(signature != NULL, "ECDSA signature fetch with provider=tokentls succeeds");
    EVP_SIGNATURE_free(signature);

    /* The certificate decoder builds its public key with the default provider too. */
    provider = provider_name_of_key(X509_get0_pubkey(test_keys[KEY_RSA].cert));
    check(strcmp(provider, "default") == 0, "certificate public key is from %s", provider);
    ERR_clear_error();
}

/* ------------------------------------------------------------------------ */
/* Key creation and properties                                                */
/* ------------------------------------------------------------------------ */

static X509 *read_cert(const char *dir, const char *file)
{
    char path[1024];
    FILE *fp;
    X509 *cert = NULL;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    fp = fopen(path, "r");
    if (fp != NULL) {
        cert = PEM_read_X509(fp, NULL, NULL, NULL);
        fclose(fp);
    }
    check(cert != NULL, "read certificate %s", path);
    return cert;
}

static EVP_PKEY *read_private_key(const char *dir, const char *file)
{
    char path[1024];
    FILE *fp;
    EVP_PKEY *key = NULL;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    fp = fopen(path, "r");
    if (fp != NULL) {
        key = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
        fclose(fp);
    }
    check(key != NULL, "read private key %s", path);
    return key;
}

static void test_key_properties(test_key *key)
{
    EVP_PKEY *public_key = X509_get0_pubkey(key->cert);
    EVP_PKEY *token_key = key->token_key;
    char group[64] = "";
    char expected_group[64] = "";

    check(strcmp(provider_name_of_key(token_key), TOKENTLS_PROVIDER_NAME) == 0,
          "%s: token key is from %s", key->name, provider_name_of_key(token_key));
    check(tokentls_provider_key_ref(token_key) == key->key_ref, "%s: key reference returned",
          key->name);
    check(EVP_PKEY_get_bits(token_key) == EVP_PKEY_get_bits(public_key),
          "%s: bits %d equal certificate's %d", key->name, EVP_PKEY_get_bits(token_key),
          EVP_PKEY_get_bits(public_key));
    check(EVP_PKEY_get_security_bits(token_key) == EVP_PKEY_get_security_bits(public_key),
          "%s: security bits equal certificate's", key->name);
    check(EVP_PKEY_get_size(token_key) == EVP_PKEY_get_size(public_key),
          "%s: max size %d equals certificate's %d", key->name, EVP_PKEY_get_size(token_key),
          EVP_PKEY_get_size(public_key));
    check(EVP_PKEY_is_a(token_key, key->order_len == 0 ? "RSA" : "EC"), "%s: key type", key->name);
    if (key->order_len != 0) {
        check(EVP_PKEY_get_group_name(token_key, group, sizeof(group), NULL)
                  && EVP_PKEY_get_group_name(public_key, expected_group, sizeof(expected_group),
                                             NULL)
                  && strcmp(group, expected_group) == 0,
              "%s: group name %s equals certificate's %s", key->name, group, expected_group);
    }
    ERR_clear_error();
}

static void test_new_key_rejections(void)
{
    EVP_PKEY *small_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    EVP_PKEY *p224 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-224");
    EVP_PKEY *ed25519 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    int releases_before = atomic_load(&release_calls);
    EVP_PKEY *key;

    ERR_clear_error();
    key = tokentls_provider_new_key(small_rsa, 900);
    check(key == NULL, "RSA-1024 key is rejected");
    check(error_queue_contains("key too small"), "RSA-1024 rejection says key too small");
    EVP_PKEY_free(key);

    key = tokentls_provider_new_key(p224, 901);
    check(key == NULL, "P-224 key is rejected");
    check(error_queue_contains("unsupported curve"), "P-224 rejection says unsupported curve");
    EVP_PKEY_free(key);

    key = tokentls_provider_new_key(ed25519, 902);
    check(key == NULL, "Ed25519 key is rejected");
    check(error_queue_contains("unsupported key type"), "Ed25519 rejection says unsupported key type");
    EVP_PKEY_free(key);

    key = tokentls_provider_new_key(X509_get0_pubkey(test_keys[KEY_RSA].cert), 0);
    check(key == NULL, "key reference 0 is rejected");
    EVP_PKEY_free(key);
    ERR_clear_error();

    check(atomic_load(&release_calls) == releases_before,
          "rejected keys do not call the release callback");
    check(tokentls_provider_key_ref(small_rsa) == 0, "key_ref of a default provider key is 0");
    check(tokentls_provider_key_ref(NULL) == 0, "key_ref of NULL is 0");

    EVP_PKEY_free(small_rsa);
    EVP_PKEY_free(p224);
    EVP_PKEY_free(ed25519);
}

/* A public key with a compressed point is accepted and reported uncompressed. */
static void test_compressed_point_key(void)
{
    EVP_PKEY *source = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *key = NULL;
    unsigned char point[133];
    size_t point_len = 0;

    check(source != NULL
              && EVP_PKEY_set_utf8_string_param(source, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                                OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_COMPRESSED)
                     == 1,
          "P-256 key with compressed point format is created");
    key = tokentls_provider_new_key(source, 903);
    check(key != NULL, "token key from a compressed-point public key is created");
    check(key != NULL
              && EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                                 sizeof(point), &point_len)
                     == 1
              && point_len == 65 && point[0] == 0x04,
          "token key reports the point uncompressed (%zu bytes)", point_len);
    check(key != NULL && EVP_PKEY_eq(key, source) == 1, "token key equals its source key");
    EVP_PKEY_free(key);
    EVP_PKEY_free(source);
    ERR_clear_error();
}

/* ------------------------------------------------------------------------ */
/* Export                                                                     */
/* ------------------------------------------------------------------------ */

static void test_export(test_key *key)
{
    EVP_PKEY *token_key = key->token_key;
    OSSL_PARAM *params = NULL;
    BIGNUM *bn = NULL;
    BIO *bio;
    unsigned char *token_spki = NULL, *cert_spki = NULL;
    int token_spki_len, cert_spki_len;
    int is_rsa = key->order_len == 0;

    check(EVP_PKEY_todata(token_key, EVP_PKEY_KEYPAIR, &params) != 1,
          "%s: EVP_PKEY_todata of the key pair fails", key->name);
    OSSL_PARAM_free(params);
    params = NULL;
    check(error_queue_contains("cannot be exported"), "%s: key pair export says cannot be exported",
          key->name);

    check(EVP_PKEY_get_bn_param(token_key, is_rsa ? OSSL_PKEY_PARAM_RSA_D : OSSL_PKEY_PARAM_PRIV_KEY,
                                &bn)
              != 1,
          "%s: private parameter cannot be read", key->name);
    BN_free(bn);
    bn = NULL;

    check(EVP_PKEY_todata(token_key, EVP_PKEY_PUBLIC_KEY, &params) == 1,
          "%s: EVP_PKEY_todata of the public key works", key->name);
    if (params != NULL) {
        check(OSSL_PARAM_locate(params, is_rsa ? OSSL_PKEY_PARAM_RSA_N : OSSL_PKEY_PARAM_PUB_KEY)
                  != NULL,
              "%s: public export contains the public key", key->name);
        check(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_D) == NULL
                  && OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PRIV_KEY) == NULL
                  && OSSL_PARAM_locate(params, "tokentls-key-ref") == NULL,
              "%s: public export contains no private part", key->name);
    }
    OSSL_PARAM_free(params);

    bio = BIO_new(BIO_s_mem());
    check(PEM_write_bio_PrivateKey(bio, token_key, NULL, NULL, 0, NULL, NULL) != 1,
          "%s: PEM_write_bio_PrivateKey fails", key->name);
    BIO_free(bio);
    ERR_clear_error();

    token_spki_len = i2d_PUBKEY(token_key, &token_spki);
    cert_spki_len = i2d_PUBKEY(X509_get0_pubkey(key->cert), &cert_spki);
    check(token_spki_len > 0 && token_spki_len == cert_spki_len
              && memcmp(token_spki, cert_spki, (size_t)cert_spki_len) == 0,
          "%s: i2d_PUBKEY equals the certificate's SubjectPublicKeyInfo", key->name);
    OPENSSL_free(token_spki);
    OPENSSL_free(cert_spki);
    ERR_clear_error();
}

static void test_check_private_key(void)
{
    X509 *rsa_cert = test_keys[KEY_RSA].cert;

    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        test_key *key = &test_keys[i];
        X509 *other = i == KEY_P256 ? test_keys[KEY_P384].cert : test_keys[KEY_P256].cert;

        ERR_clear_error();
        check(X509_check_private_key(key->cert, key->token_key) == 1,
              "%s: X509_check_private_key with its own certificate", key->name);
        if (ERR_peek_error() != 0) {
            printf("note: %s: errors left after a successful X509_check_private_key:\n", key->name);
            ERR_print_errors_fp(stdout);
        }
        check(X509_check_private_key(i == KEY_RSA ? test_keys[KEY_P256].cert : other,
                                     key->token_key)
                  != 1,
              "%s: X509_check_private_key with another certificate fails", key->name);
        ERR_clear_error();
    }

    /* A second RSA key with another modulus must not match the RSA certificate. */
    {
        EVP_PKEY *other_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        EVP_PKEY *other_token = tokentls_provider_new_key(other_rsa, 777);

        check(other_token != NULL, "second RSA token key is created");
        check(X509_check_private_key(rsa_cert, other_token) != 1,
              "X509_check_private_key with another RSA modulus fails");

        /* Two token keys go through the provider's own match function. */
        EVP_PKEY *twin = tokentls_provider_new_key(X509_get0_pubkey(rsa_cert), 778);

        check(twin != NULL, "token key twin with another reference is created");
        check(EVP_PKEY_eq(twin, test_keys[KEY_RSA].token_key) == 1,
              "token keys with the same public key are equal");
        check(EVP_PKEY_eq(other_token, test_keys[KEY_RSA].token_key) != 1,
              "token keys with different moduli are not equal");
        check(EVP_PKEY_eq(test_keys[KEY_P256].token_key, test_keys[KEY_P384].token_key) != 1,
              "P-256 and P-384 token keys are not equal");
        EVP_PKEY_free(twin);
        check(atomic_load(&last_released_ref) == 778, "freeing the twin releases its reference");
        EVP_PKEY_free(other_token);
        EVP_PKEY_free(other_rsa);
        check(atomic_load(&last_released_ref) == 777, "freeing the second RSA key releases it");
        ERR_clear_error();
    }
}

/* ------------------------------------------------------------------------ */
/* Direct signing                                                             */
/* ------------------------------------------------------------------------ */

/* Signs message through EVP_DigestSign with the token key and verifies with the certificate key. */
static int sign_and_verify(test_key *key, const char *digest_name, int pad_mode, int salt_length,
                           int *callback_delta)
{
    static const unsigned char message[] = "token signing test message";
    EVP_MD_CTX *sign_ctx = EVP_MD_CTX_new();
    EVP_MD_CTX *verify_ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pkey_ctx = NULL;
    unsigned char signature[1024];
    size_t signature_len = 0;
    int before = atomic_load(&sign_calls);
    int ok = 0;

    if (EVP_DigestSignInit_ex(sign_ctx, &pkey_ctx, digest_name, NULL, NULL, key->token_key, NULL)
        != 1)
        goto end;
    if (pad_mode != 0 && EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, pad_mode) <= 0)
        goto end;
    if (pad_mode == RSA_PKCS1_PSS_PADDING && EVP_PKEY_CTX_set_rsa_pss_saltlen(pkey_ctx, salt_length) <= 0)
        goto end;
    if (EVP_DigestSign(sign_ctx, NULL, &signature_len, message, sizeof(message)) != 1
        || signature_len > sizeof(signature))
        goto end;
    if (EVP_DigestSign(sign_ctx, signature, &signature_len, message, sizeof(message)) != 1)
        goto end;

    pkey_ctx = NULL;
    if (EVP_DigestVerifyInit_ex(verify_ctx, &pkey_ctx, digest_name, NULL, NULL,
                                X509_get0_pubkey(key->cert), NULL)
        != 1)
        goto end;
    if (pad_mode != 0 && EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, pad_mode) <= 0)
        goto end;
    if (pad_mode == RSA_PKCS1_PSS_PADDING
        && EVP_PKEY_CTX_set_rsa_pss_saltlen(pkey_ctx, RSA_PSS_SALTLEN_DIGEST) <= 0)
        goto end;
    ok = EVP_DigestVerify(verify_ctx, signature, signature_len, message, sizeof(message)) == 1;
    if (ok && ERR_peek_error() != 0 && getenv("PROVIDER_TEST_SHOW_ERRORS") != NULL) {
        printf("note: %s: errors left after a successful signature:\n", key->name);
        ERR_print_errors_fp(stdout);
    }

end:
    if (callback_delta != NULL)
        *callback_delta = atomic_load(&sign_calls) - before;
    EVP_MD_CTX_free(sign_ctx);
    EVP_MD_CTX_free(verify_ctx);
    return ok;
}

static void test_direct_signing(void)
{
    test_key *rsa = &test_keys[KEY_RSA];
    int delta = 0;

    check(sign_and_verify(rsa, "SHA256", RSA_PKCS1_PADDING, 0, &delta) && delta == 1,
          "RSA PKCS#1 SHA-256 signature verifies (callback calls %d)", delta);
    check(atomic_load(&last_scheme) == TOKENTLS_SCHEME_RSA_PKCS1, "RSA PKCS#1 scheme passed");
    check(sign_and_verify(rsa, "SHA384", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST, &delta)
              && delta == 1,
          "RSA-PSS SHA-384 salt=digest signature verifies");
    check(atomic_load(&last_scheme) == TOKENTLS_SCHEME_RSA_PSS
              && atomic_load(&last_digest_nid) == NID_sha384,
          "RSA-PSS scheme and SHA-384 passed");
    check(sign_and_verify(rsa, "SHA512", RSA_PKCS1_PSS_PADDING, 64, &delta),
          "RSA-PSS SHA-512 with salt length 64 verifies");

    check(!sign_and_verify(rsa, "SHA256", RSA_PKCS1_PSS_PADDING, 20, &delta) && delta == 0,
          "RSA-PSS salt length 20 with SHA-256 is rejected before the token");
    check(error_queue_contains("invalid PSS salt length"), "salt rejection says invalid PSS salt length");
    check(!sign_and_verify(rsa, "SHA256", RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_MAX, &delta)
              && delta == 0,
          "RSA-PSS salt length max is rejected");
    ERR_clear_error();
    check(!sign_and_verify(rsa, "SHA256", RSA_NO_PADDING, 0, &delta) && delta == 0,
          "RSA without padding is rejected");
    check(error_queue_contains("unsupported padding mode"), "padding rejection says unsupported padding mode");

    /* An MGF1 digest other than the signature digest is rejected. */
    {
        EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pkey_ctx = NULL;
        int rejected = EVP_DigestSignInit_ex(md_ctx, &pkey_ctx, "SHA256", NULL, NULL,
                                             rsa->token_key, NULL)
                           == 1
                       && EVP_PKEY_CTX_set_rsa_padding(pkey_ctx, RSA_PKCS1_PSS_PADDING) > 0
                       && EVP_PKEY_CTX_set_rsa_mgf1_md_name(pkey_ctx, "SHA1", NULL) <= 0;

        check(rejected, "MGF1 SHA-1 with SHA-256 is rejected");
        check(error_queue_contains("invalid MGF1 digest"), "MGF1 rejection says invalid MGF1 digest");
        EVP_MD_CTX_free(md_ctx);
    }

    for (size_t i = KEY_P256; i <= KEY_P521; i++) {
        const char *digests[] = { "SHA256", "SHA384", "SHA512" };
        const char *digest = digests[i - KEY_P256];

        check(sign_and_verify(&test_keys[i], digest, 0, 0, &delta) && delta == 1,
              "%s ECDSA %s from r||s verifies", test_keys[i].name, digest);
        check(atomic_load(&last_scheme) == TOKENTLS_SCHEME_ECDSA, "%s ECDSA scheme passed",
              test_keys[i].name);
        atomic_store(&ecdsa_returns_der, 1);
        check(sign_and_verify(&test_keys[i], digest, 0, 0, &delta) && delta == 1,
              "%s ECDSA %s from DER verifies", test_keys[i].name, digest);
        atomic_store(&ecdsa_returns_der, 0);
    }
    check(sign_and_verify(&test_keys[KEY_P384], "SHA1", 0, 0, &delta),
          "P-384 ECDSA SHA-1 verifies");
    check(!sign_and_verify(&test_keys[KEY_P256], "SHA3-256", 0, 0, &delta) && delta == 0,
          "SHA3-256 is rejected");
    check(error_queue_contains("unsupported digest"), "SHA3-256 rejection says unsupported digest");

    atomic_store(&signing_fails, 1);
    check(!sign_and_verify(&test_keys[KEY_P256], "SHA256", 0, 0, &delta) && delta == 1,
          "failing sign callback makes EVP_DigestSign fail");
    check(error_queue_contains("token signing failed"), "callback failure says token signing failed");
    atomic_store(&signing_fails, 0);

    /* A digest_sign_init that is freed without signing does not reach the token. */
    {
        EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
        int before = atomic_load(&sign_calls);

        check(EVP_DigestSignInit_ex(md_ctx, NULL, "SHA256", NULL, NULL, rsa->token_key, NULL) == 1,
              "probe digest_sign_init succeeds");
        EVP_MD_CTX_free(md_ctx);
        check(atomic_load(&sign_calls) == before, "probe digest_sign_init does not call the token");
    }
    ERR_clear_error();
}

/* Signs a ready digest with EVP_PKEY_sign, as a caller of sign_init and sign would. */
static void test_prehashed_signing(void)
{
    test_key *key = &test_keys[KEY_P384];
    unsigned char digest[48];
    unsigned char signature[256];
    size_t signature_len = sizeof(signature);
    EVP_PKEY_CTX *sign_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->token_key, NULL);
    EVP_PKEY_CTX *verify_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, X509_get0_pubkey(key->cert), NULL);
    int before = atomic_load(&sign_calls);

    memset(digest, 0x3c, sizeof(digest));
    check(sign_ctx != NULL && EVP_PKEY_sign_init(sign_ctx) == 1, "pre-hashed: sign_init");
    check(EVP_PKEY_sign(sign_ctx, signature, &signature_len, digest, sizeof(digest)) == 1,
          "pre-hashed: 48-byte digest without a digest parameter signs");
    check(atomic_load(&last_digest_nid) == NID_sha384, "pre-hashed: 48 bytes are taken as SHA-384");
    check(verify_ctx != NULL && EVP_PKEY_verify_init(verify_ctx) == 1
              && EVP_PKEY_verify(verify_ctx, signature, signature_len, digest, sizeof(digest)) == 1,
          "pre-hashed: signature verifies");
    check(atomic_load(&sign_calls) - before == 1, "pre-hashed: one callback");

    signature_len = sizeof(signature);
    check(EVP_PKEY_CTX_set_signature_md(sign_ctx, EVP_sha256()) == 1
              && EVP_PKEY_sign(sign_ctx, signature, &signature_len, digest, sizeof(digest)) != 1,
          "pre-hashed: 48-byte digest with SHA-256 set is rejected");
    check(error_queue_contains("invalid digest length"), "pre-hashed: rejection says invalid digest length");
    EVP_PKEY_CTX_free(sign_ctx);
    EVP_PKEY_CTX_free(verify_ctx);

    /* RSA-PSS through sign_init and sign with the digest named. */
    key = &test_keys[KEY_RSA];
    sign_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key->token_key, NULL);
    verify_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, X509_get0_pubkey(key->cert), NULL);
    signature_len = sizeof(signature);
    check(sign_ctx != NULL && EVP_PKEY_sign_init(sign_ctx) == 1
              && EVP_PKEY_CTX_set_rsa_padding(sign_ctx, RSA_PKCS1_PSS_PADDING) == 1
              && EVP_PKEY_CTX_set_signature_md(sign_ctx, EVP_sha384()) == 1
              && EVP_PKEY_CTX_set_rsa_pss_saltlen(sign_ctx, RSA_PSS_SALTLEN_DIGEST) == 1
              && EVP_PKEY_sign(sign_ctx, signature, &signature_len, digest, sizeof(digest)) == 1,
          "pre-hashed: RSA-PSS SHA-384 signs");
    check(verify_ctx != NULL && EVP_PKEY_verify_init(verify_ctx) == 1
              && EVP_PKEY_CTX_set_rsa_padding(verify_ctx, RSA_PKCS1_PSS_PADDING) == 1
              && EVP_PKEY_CTX_set_signature_md(verify_ctx, EVP_sha384()) == 1
              && EVP_PKEY_verify(verify_ctx, signature, signature_len, digest, sizeof(digest)) == 1,
          "pre-hashed: RSA-PSS signature verifies");
    EVP_PKEY_CTX_free(sign_ctx);
    EVP_PKEY_CTX_free(verify_ctx);
    ERR_clear_error();
}

/* ------------------------------------------------------------------------ */
/* Concurrent signing                                                         */
/* ------------------------------------------------------------------------ */

#define SIGNING_THREADS 4
#define SIGNATURES_PER_THREAD 20

static atomic_int concurrent_failures;

static void *concurrent_signer(void *arg)
{
    test_key *key = arg;

    for (int i = 0; i < SIGNATURES_PER_THREAD; i++) {
        int pad = key->order_len == 0 ? RSA_PKCS1_PSS_PADDING : 0;

        if (!sign_and_verify(key, "SHA256", pad, RSA_PSS_SALTLEN_DIGEST, NULL))
            atomic_fetch_add(&concurrent_failures, 1);
    }
    ERR_clear_error();
    return NULL;
}

static void test_concurrent_signing(void)
{
    pthread_t threads[2 * SIGNING_THREADS];
    int before = atomic_load(&sign_calls);

    for (int i = 0; i < 2 * SIGNING_THREADS; i++) {
        test_key *key = i % 2 == 0 ? &test_keys[KEY_RSA] : &test_keys[KEY_P256];

        pthread_create(&threads[i], NULL, concurrent_signer, key);
    }
    for (int i = 0; i < 2 * SIGNING_THREADS; i++)
        pthread_join(threads[i], NULL);
    check(atomic_load(&concurrent_failures) == 0, "concurrent signing: %d of %d signatures failed",
          atomic_load(&concurrent_failures), 2 * SIGNING_THREADS * SIGNATURES_PER_THREAD);
    check(atomic_load(&sign_calls) - before == 2 * SIGNING_THREADS * SIGNATURES_PER_THREAD,
          "concurrent signing: one callback per signature");
}

/* ------------------------------------------------------------------------ */
/* TLS handshakes                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    int key_index;
    int version;
    const char *client_sigalgs;  /* NULL: OpenSSL's default list */
    int ecdsa_der;               /* the callback returns DER instead of r||s */
    int key_before_cert;         /* SSL_CTX_use_PrivateKey before SSL_CTX_use_certificate */
    int expected_scheme;
    int expected_digest_nid;     /* NID_undef: any */
} handshake_case;

static int connect_to_server(int port)
{
    struct sockaddr_in address;
    struct timeval timeout = { 10, 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    memset(&address, 0, sizeof(address));
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t)port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends an HTTP GET and reads the s_server -www status page until the server closes. */
static size_t fetch_status_page(SSL *ssl, char *page, size_t capacity)
{
    static const char request[] = "GET / HTTP/1.0\r\n\r\n";
    size_t length = 0;
    int n;

    if (SSL_write(ssl, request, (int)strlen(request)) <= 0)
        return 0;
    while (length + 1 < capacity
           && (n = SSL_read(ssl, page + length, (int)(capacity - 1 - length))) > 0)
        length += (size_t)n;
    page[length] = '\0';
    return length;
}

static void run_handshake(const handshake_case *test, const char *ca_path, int port)
{
    test_key *key = &test_keys[test->key_index];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = -1;
    int before;
    static char page[65536];
    char expected_subject[128];
    int ok;

    ERR_clear_error();
    check(ctx != NULL, "%s: SSL_CTX_new", test->name);
    if (ctx == NULL)
        return;
    SSL_CTX_set_min_proto_version(ctx, test->version);
    SSL_CTX_set_max_proto_version(ctx, test->version);
    check(SSL_CTX_load_verify_locations(ctx, ca_path, NULL) == 1, "%s: load CA", test->name);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (test->client_sigalgs != NULL)
        check(SSL_CTX_set1_client_sigalgs_list(ctx, test->client_sigalgs) == 1,
              "%s: set client sigalgs %s", test->name, test->client_sigalgs);

    if (test->key_before_cert) {
        check(SSL_CTX_use_PrivateKey(ctx, key->token_key) == 1, "%s: use token key", test->name);
        check(SSL_CTX_use_certificate(ctx, key->cert) == 1, "%s: use certificate", test->name);
    } else {
        check(SSL_CTX_use_certificate(ctx, key->cert) == 1, "%s: use certificate", test->name);
        check(SSL_CTX_use_PrivateKey(ctx, key->token_key) == 1, "%s: use token key", test->name);
    }
    check(SSL_CTX_check_private_key(ctx) == 1, "%s: SSL_CTX_check_private_key", test->name);

    fd = connect_to_server(port);
    check(fd >= 0, "%s: connect to 127.0.0.1:%d", test->name, port);
    if (fd < 0)
        goto end;
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");

    atomic_store(&ecdsa_returns_der, test->ecdsa_der);
    atomic_store(&last_scheme, 0);
    atomic_store(&last_digest_nid, NID_undef);
    before = atomic_load(&sign_calls);

    ok = SSL_connect(ssl) == 1;
    check(ok, "%s: handshake succeeds", test->name);
    if (!ok)
        goto end;
    check(SSL_version(ssl) == test->version, "%s: negotiated %s", test->name, SSL_get_version(ssl));
    check(SSL_get_verify_result(ssl) == X509_V_OK, "%s: server certificate verified (%s)",
          test->name, X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
    if (ERR_peek_error() != 0) {
        printf("note: %s: errors left in the queue after a successful handshake:\n", test->name);
        ERR_print_errors_fp(stdout);
    }

    fetch_status_page(ssl, page, sizeof(page));
    /* X509_print, which s_server uses for the page, writes names in the compact "CN=x" form. */
    snprintf(expected_subject, sizeof(expected_subject), "Subject: CN=%s\n", key->common_name);
    check(strstr(page, "Client certificate") != NULL, "%s: server reports a client certificate",
          test->name);
    check(strstr(page, expected_subject) != NULL, "%s: server saw the subject CN=%s", test->name,
          key->common_name);
    check(strstr(page, "Verify return code: 0 (ok)") != NULL,
          "%s: server verified the client certificate", test->name);

    check(atomic_load(&sign_calls) - before == 1, "%s: sign callback called %d times, expected 1",
          test->name, atomic_load(&sign_calls) - before);
    check(atomic_load(&last_scheme) == test->expected_scheme, "%s: scheme %d, expected %d",
          test->name, atomic_load(&last_scheme), test->expected_scheme);
    if (test->expected_digest_nid != NID_undef)
        check(atomic_load(&last_digest_nid) == test->expected_digest_nid,
              "%s: digest %s, expected %s", test->name, OBJ_nid2sn(atomic_load(&last_digest_nid)),
              OBJ_nid2sn(test->expected_digest_nid));
    printf("ok: %s: %s, %s, %s\n", test->name, SSL_get_version(ssl),
           SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)),
           OBJ_nid2sn(atomic_load(&last_digest_nid)));

end:
    atomic_store(&ecdsa_returns_der, 0);
    if (ssl != NULL) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    ERR_clear_error();
}

static void test_handshakes(const char *dir, int port)
{
    static const char pss_sigalgs[] = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512";
    static const char pkcs1_sigalgs[] = "RSA+SHA256:RSA+SHA384:RSA+SHA512";
    const handshake_case cases[] = {
        { "RSA TLS 1.3", KEY_RSA, TLS1_3_VERSION, NULL, 0, 1, TOKENTLS_SCHEME_RSA_PSS, NID_undef },
        { "RSA TLS 1.2 PSS", KEY_RSA, TLS1_2_VERSION, pss_sigalgs, 0, 0, TOKENTLS_SCHEME_RSA_PSS,
          NID_undef },
        { "RSA TLS 1.2 PKCS#1", KEY_RSA, TLS1_2_VERSION, pkcs1_sigalgs, 0, 0,
          TOKENTLS_SCHEME_RSA_PKCS1, NID_undef },
        { "P-256 TLS 1.3", KEY_P256, TLS1_3_VERSION, NULL, 0, 0, TOKENTLS_SCHEME_ECDSA, NID_sha256 },
        { "P-384 TLS 1.3", KEY_P384, TLS1_3_VERSION, NULL, 0, 1, TOKENTLS_SCHEME_ECDSA, NID_sha384 },
        { "P-521 TLS 1.3", KEY_P521, TLS1_3_VERSION, NULL, 0, 0, TOKENTLS_SCHEME_ECDSA, NID_sha512 },
        { "P-256 TLS 1.2", KEY_P256, TLS1_2_VERSION, NULL, 0, 0, TOKENTLS_SCHEME_ECDSA, NID_undef },
        { "P-384 TLS 1.2", KEY_P384, TLS1_2_VERSION, NULL, 0, 0, TOKENTLS_SCHEME_ECDSA, NID_undef },
        { "P-521 TLS 1.2", KEY_P521, TLS1_2_VERSION, NULL, 0, 0, TOKENTLS_SCHEME_ECDSA, NID_undef },
        { "P-256 TLS 1.3 DER from token", KEY_P256, TLS1_3_VERSION, NULL, 1, 0,
          TOKENTLS_SCHEME_ECDSA, NID_sha256 },
        { "P-521 TLS 1.2 DER from token", KEY_P521, TLS1_2_VERSION, NULL, 1, 0,
          TOKENTLS_SCHEME_ECDSA, NID_undef },
    };
    char ca_path[1024];

    snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_handshake(&cases[i], ca_path, port);
}

/* ------------------------------------------------------------------------ */
/* Release                                                                    */
/* ------------------------------------------------------------------------ */

static void test_dup_and_release(void)
{
    EVP_PKEY *public_key = X509_get0_pubkey(test_keys[KEY_P384].cert);
    EVP_PKEY *key = tokentls_provider_new_key(public_key, DUP_TEST_KEY_REF);
    EVP_PKEY *copy = key != NULL ? EVP_PKEY_dup(key) : NULL;
    int before = atomic_load(&release_calls);
    int delta = 0;

    check(key != NULL, "key for the dup test is created");
    check(copy != NULL, "EVP_PKEY_dup of a token key works");
    check(tokentls_provider_key_ref(copy) == DUP_TEST_KEY_REF, "copy keeps the key reference");
    EVP_PKEY_free(key);
    check(atomic_load(&release_calls) == before, "freeing the original keeps the reference alive");

    /* The copy still signs; the callback maps reference 555 to the P-384 private key. */
    if (copy != NULL) {
        test_key stand_in = test_keys[KEY_P384];

        stand_in.token_key = copy;
        check(sign_and_verify(&stand_in, "SHA384", 0, 0, &delta) && delta == 1,
              "copy signs after the original is freed");
    }
    check(copy != NULL && X509_check_private_key(test_keys[KEY_P384].cert, copy) == 1,
          "copy matches the certificate");
    EVP_PKEY_free(copy);
    delta = atomic_load(&release_calls) - before;
    check(delta == 1 && atomic_load(&last_released_ref) == DUP_TEST_KEY_REF,
          "freeing the last copy releases the reference once (%d calls)", delta);
    ERR_clear_error();
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *dir;
    int port;
    int releases_before;

    if (argc != 3) {
        fprintf(stderr, "usage: %s DIR PORT\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    port = atoi(argv[2]);

    test_ecdsa_conversion();

    /* Before loading, key creation fails; generating the key also activates OpenSSL's
       implicit default provider, as an application that parses certificates first would. */
    {
        EVP_PKEY *early = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        EVP_PKEY *key = tokentls_provider_new_key(early, 904);

        check(key == NULL, "tokentls_provider_new_key before loading fails");
        check(error_queue_contains("not loaded"), "early key creation says the provider is not loaded");
        EVP_PKEY_free(key);
        EVP_PKEY_free(early);
    }

    check(tokentls_provider_load(test_sign, test_release) == 1, "tokentls_provider_load");
    check(tokentls_provider_load(NULL, NULL) == 0, "tokentls_provider_load rejects a NULL callback");
    ERR_clear_error();
    check(tokentls_provider_load(test_sign, test_release) == 1,
          "second tokentls_provider_load returns the first result");

    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        char file[64];

        snprintf(file, sizeof(file), "client-%s.crt", test_keys[i].name);
        test_keys[i].cert = read_cert(dir, file);
        snprintf(file, sizeof(file), "client-%s.key", test_keys[i].name);
        test_keys[i].private_key = read_private_key(dir, file);
        if (test_keys[i].cert == NULL || test_keys[i].private_key == NULL)
            goto summary;
        test_keys[i].token_key =
            tokentls_provider_new_key(X509_get0_pubkey(test_keys[i].cert), test_keys[i].key_ref);
        check(test_keys[i].token_key != NULL, "%s: tokentls_provider_new_key", test_keys[i].name);
        if (test_keys[i].token_key == NULL)
            goto summary;
    }

    test_unqualified_fetches();
    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        test_key_properties(&test_keys[i]);
        test_export(&test_keys[i]);
    }
    test_new_key_rejections();
    test_compressed_point_key();
    test_check_private_key();
    test_direct_signing();
    test_prehashed_signing();
    test_concurrent_signing();
    test_handshakes(dir, port);
    test_dup_and_release();

    releases_before = atomic_load(&release_calls);
    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        EVP_PKEY_free(test_keys[i].token_key);
        test_keys[i].token_key = NULL;
    }
    check(atomic_load(&release_calls) - releases_before == (int)TEST_KEY_COUNT,
          "freeing the token keys releases each reference once");

summary:
    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        EVP_PKEY_free(test_keys[i].token_key);
        EVP_PKEY_free(test_keys[i].private_key);
        X509_free(test_keys[i].cert);
    }
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}
