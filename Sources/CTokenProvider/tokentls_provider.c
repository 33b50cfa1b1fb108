/*
 * OpenSSL 3 provider whose RSA and EC keys sign through a PKCS#11 token.
 *
 * The provider runs as a built-in in the process's default library context
 * and calls libcrypto directly. It supplies only key management for token
 * keys and the signature operations on them. Hashing, public key checks and
 * every other operation stay with the default provider.
 */
#include "tokentls_provider.h"
#include "tokentls_provider_internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>

/* Property of every algorithm this provider registers. */
#define PROVIDER_PROPERTY "provider=" TOKENTLS_PROVIDER_NAME

/* Key management parameter that carries the token key reference (uint64). */
#define PARAM_KEY_REF "tokentls-key-ref"

/* Property query that builds public keys with any provider except this one. */
#define PUBLIC_KEY_PROPERTY_QUERY "provider!=" TOKENTLS_PROVIDER_NAME

/* Digest used when the caller names none, as OpenSSL's RSA and EC keys do. */
#define DEFAULT_DIGEST_NAME "SHA256"

/* Smallest RSA modulus accepted, in bits. */
#define MIN_RSA_BITS 2048

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

enum {
    REASON_TOKEN_SIGNING_FAILED = 1,
    REASON_PRIVATE_KEY_NOT_EXPORTABLE,
    REASON_MISSING_KEY_REFERENCE,
    REASON_UNSUPPORTED_KEY_TYPE,
    REASON_UNSUPPORTED_CURVE,
    REASON_KEY_TOO_SMALL,
    REASON_INVALID_PUBLIC_KEY,
    REASON_KEY_ALREADY_SET,
    REASON_UNSUPPORTED_DIGEST,
    REASON_UNSUPPORTED_PADDING,
    REASON_INVALID_SALT_LENGTH,
    REASON_INVALID_MGF1_DIGEST,
    REASON_INVALID_DIGEST_LENGTH,
    REASON_SIGNATURE_BUFFER_TOO_SMALL,
    REASON_MALFORMED_TOKEN_SIGNATURE,
    REASON_PROVIDER_NOT_LOADED,
    REASON_INVALID_ARGUMENT,
    REASON_OPERATION_NOT_INITIALIZED,
    REASON_INTERNAL_ERROR,
};

/* Reason strings; OpenSSL prints them with the provider name as library. */
static const OSSL_ITEM reason_strings[] = {
    { REASON_TOKEN_SIGNING_FAILED, "token signing failed" },
    { REASON_PRIVATE_KEY_NOT_EXPORTABLE, "private key stays in the token and cannot be exported" },
    { REASON_MISSING_KEY_REFERENCE, "missing token key reference" },
    { REASON_UNSUPPORTED_KEY_TYPE, "unsupported key type" },
    { REASON_UNSUPPORTED_CURVE, "unsupported curve" },
    { REASON_KEY_TOO_SMALL, "key too small" },
    { REASON_INVALID_PUBLIC_KEY, "invalid public key" },
    { REASON_KEY_ALREADY_SET, "key already set" },
    { REASON_UNSUPPORTED_DIGEST, "unsupported digest" },
    { REASON_UNSUPPORTED_PADDING, "unsupported padding mode" },
    { REASON_INVALID_SALT_LENGTH, "invalid PSS salt length" },
    { REASON_INVALID_MGF1_DIGEST, "invalid MGF1 digest" },
    { REASON_INVALID_DIGEST_LENGTH, "invalid digest length" },
    { REASON_SIGNATURE_BUFFER_TOO_SMALL, "signature buffer too small" },
    { REASON_MALFORMED_TOKEN_SIGNATURE, "malformed signature from token" },
    { REASON_PROVIDER_NOT_LOADED, "tokentls provider not loaded" },
    { REASON_INVALID_ARGUMENT, "invalid argument" },
    { REASON_OPERATION_NOT_INITIALIZED, "operation not initialized" },
    { REASON_INTERNAL_ERROR, "internal error" },
    { 0, NULL },
};

/* Error functions of the core, recorded by provider_init. */
static const OSSL_CORE_HANDLE *core_handle;
static OSSL_FUNC_core_new_error_fn *core_new_error;
static OSSL_FUNC_core_set_error_debug_fn *core_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *core_vset_error;

static const char *reason_text(int reason)
{
    for (const OSSL_ITEM *item = reason_strings; item->ptr != NULL; item++) {
        if ((int)item->id == reason)
            return item->ptr;
    }
    return "unknown error";
}

/*
 * Pushes an error onto the calling thread's OpenSSL error queue. Once the
 * provider is initialized, the core attributes the error to the library
 * "tokentls". Before that the error goes to ERR_LIB_USER, which has no
 * reason strings, so the reason text is put into the error data instead.
 */
static void raise_error(const char *file, int line, const char *func, int reason,
                        const char *fmt, ...)
{
    va_list args;

    va_start(args, fmt);
    if (core_handle != NULL && core_new_error != NULL && core_set_error_debug != NULL
        && core_vset_error != NULL) {
        core_new_error(core_handle);
        core_set_error_debug(core_handle, file, line, func);
        core_vset_error(core_handle, (uint32_t)reason, fmt, args);
    } else {
        char detail[256] = "";

        if (fmt != NULL)
            vsnprintf(detail, sizeof(detail), fmt, args);
        ERR_new();
        ERR_set_debug(file, line, func);
        ERR_set_error(ERR_LIB_USER, reason, "%s%s%s", reason_text(reason),
                      detail[0] != '\0' ? ": " : "", detail);
    }
    va_end(args);
}

#define RAISE(reason, ...) raise_error(OPENSSL_FILE, OPENSSL_LINE, OPENSSL_FUNC, (reason), __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* Load state                                                                */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t load_mutex = PTHREAD_MUTEX_INITIALIZER;
static int load_attempted;
static int load_result;
static atomic_int provider_ready;

/* Written once under load_mutex before the provider is loaded, read-only afterwards. */
static tokentls_sign_callback sign_callback;
static tokentls_release_callback release_callback;

/* ------------------------------------------------------------------------ */
/* Key data                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
    KEY_TYPE_RSA = 1,
    KEY_TYPE_EC = 2,
} key_type;

/* A named curve this provider accepts. */
typedef struct {
    /* OpenSSL short name, which libssl turns back into a NID with OBJ_txt2nid. */
    const char *group_name;
    int nid;
    /* Length of the group order in bytes, which is also the length of r and s. */
    size_t order_len;
} curve_info;

static const curve_info supported_curves[] = {
    { SN_X9_62_prime256v1, NID_X9_62_prime256v1, 32 },
    { SN_secp384r1, NID_secp384r1, 48 },
    { SN_secp521r1, NID_secp521r1, 66 },
};

/*
 * Key data of this provider's key management. An import fills it once, and
 * after that it is read-only, so signing threads share it without locks.
 * EVP_PKEY_dup and signature contexts share one instance through the
 * reference count.
 */
typedef struct {
    atomic_int references;
    key_type type;
    /* Token key reference; 0 until an import succeeds, and released with the key data. */
    uint64_t key_ref;
    /* The public half, held by another provider (normally "default"). */
    EVP_PKEY *public_key;
    int bits;
    int security_bits;
    /* Maximum signature length in bytes: the modulus length for RSA, the DER size for ECDSA. */
    int max_size;
    /* RSA modulus and public exponent. */
    BIGNUM *n;
    BIGNUM *e;
    /* EC curve and the public point in uncompressed form. */
    const curve_info *curve;
    unsigned char *encoded_point;
    size_t encoded_point_len;
} token_key;

static const curve_info *find_curve(const char *group_name)
{
    int nid = EC_curve_nist2nid(group_name);

    if (nid == NID_undef)
        nid = OBJ_txt2nid(group_name);
    for (size_t i = 0; i < sizeof(supported_curves) / sizeof(supported_curves[0]); i++) {
        if (supported_curves[i].nid == nid)
            return &supported_curves[i];
    }
    return NULL;
}

static token_key *key_new(key_type type)
{
    token_key *key = OPENSSL_zalloc(sizeof(*key));

    if (key == NULL)
        return NULL;
    atomic_init(&key->references, 1);
    key->type = type;
    return key;
}

static void key_up_ref(token_key *key)
{
    atomic_fetch_add_explicit(&key->references, 1, memory_order_relaxed);
}

static void key_free(token_key *key)
{
    if (key == NULL)
        return;
    if (atomic_fetch_sub_explicit(&key->references, 1, memory_order_acq_rel) != 1)
        return;

    if (key->key_ref != 0 && release_callback != NULL)
        release_callback(key->key_ref);
    EVP_PKEY_free(key->public_key);
    BN_free(key->n);
    BN_free(key->e);
    OPENSSL_free(key->encoded_point);
    OPENSSL_free(key);
}

/* ------------------------------------------------------------------------ */
/* ECDSA signature format                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Reports whether data is one canonical DER ECDSA-Sig-Value with r and s in
 * 1 .. 2^(8*order_len)-1. Decoding errors are removed from the error queue
 * because a failed decode only means that the data is r||s.
 */
static int is_canonical_der_signature(const unsigned char *data, size_t len, size_t order_len)
{
    const unsigned char *cursor = data;
    ECDSA_SIG *sig = NULL;
    unsigned char *encoded = NULL;
    int encoded_len;
    const BIGNUM *r, *s;
    int canonical = 0;

    if (len < 8 || len > LONG_MAX || data[0] != 0x30)
        return 0;

    ERR_set_mark();
    sig = d2i_ECDSA_SIG(NULL, &cursor, (long)len);
    if (sig == NULL || cursor != data + len)
        goto end;

    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_is_zero(r) || BN_is_zero(s) || BN_is_negative(r) || BN_is_negative(s)
        || (size_t)BN_num_bytes(r) > order_len || (size_t)BN_num_bytes(s) > order_len)
        goto end;

    /* A lenient decoder accepts non-minimal lengths; re-encoding exposes them. */
    encoded_len = i2d_ECDSA_SIG(sig, &encoded);
    canonical = encoded_len > 0 && (size_t)encoded_len == len && memcmp(encoded, data, len) == 0;

end:
    OPENSSL_free(encoded);
    ECDSA_SIG_free(sig);
    ERR_pop_to_mark();
    return canonical;
}

int tokentls_ecdsa_signature_to_der(const unsigned char *token_signature,
                                    size_t token_signature_len, size_t order_len,
                                    unsigned char *der, size_t der_capacity,
                                    size_t *der_len)
{
    BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG *sig = NULL;
    unsigned char *cursor;
    int encoded_len;
    int ok = 0;

    if (token_signature == NULL || der == NULL || der_len == NULL || order_len == 0) {
        RAISE(REASON_INVALID_ARGUMENT, NULL);
        return 0;
    }

    /*
     * Some tokens return DER although PKCS#11 specifies r||s. Random r||s
     * forms canonical DER only if at least five of its bytes have fixed
     * values, so input that parses as canonical DER is taken as DER.
     */
    if (is_canonical_der_signature(token_signature, token_signature_len, order_len)) {
        if (token_signature_len > der_capacity) {
            RAISE(REASON_SIGNATURE_BUFFER_TOO_SMALL, "need %zu bytes, have %zu",
                  token_signature_len, der_capacity);
            return 0;
        }
        memcpy(der, token_signature, token_signature_len);
        *der_len = token_signature_len;
        return 1;
    }

    if (token_signature_len != 2 * order_len) {
        RAISE(REASON_MALFORMED_TOKEN_SIGNATURE,
              "ECDSA signature of %zu bytes is neither DER nor r||s of %zu bytes",
              token_signature_len, 2 * order_len);
        return 0;
    }

    r = BN_bin2bn(token_signature, (int)order_len, NULL);
    s = BN_bin2bn(token_signature + order_len, (int)order_len, NULL);
    if (r == NULL || s == NULL) {
        RAISE(REASON_INTERNAL_ERROR, "BN_bin2bn failed");
        goto end;
    }
    if (BN_is_zero(r) || BN_is_zero(s)) {
        RAISE(REASON_MALFORMED_TOKEN_SIGNATURE, "ECDSA signature has r or s equal to 0");
        goto end;
    }

    sig = ECDSA_SIG_new();
    if (sig == NULL || !ECDSA_SIG_set0(sig, r, s)) {
        RAISE(REASON_INTERNAL_ERROR, "ECDSA_SIG_set0 failed");
        goto end;
    }
    r = NULL;
    s = NULL;

    /* i2d_ECDSA_SIG adds the 0x00 byte that keeps a half with its top bit set positive. */
    encoded_len = i2d_ECDSA_SIG(sig, NULL);
    if (encoded_len <= 0) {
        RAISE(REASON_INTERNAL_ERROR, "i2d_ECDSA_SIG failed");
        goto end;
    }
    if ((size_t)encoded_len > der_capacity) {
        RAISE(REASON_SIGNATURE_BUFFER_TOO_SMALL, "need %d bytes, have %zu", encoded_len,
              der_capacity);
        goto end;
    }
    cursor = der;
    if (i2d_ECDSA_SIG(sig, &cursor) != encoded_len) {
        RAISE(REASON_INTERNAL_ERROR, "i2d_ECDSA_SIG failed");
        goto end;
    }
    *der_len = (size_t)encoded_len;
    ok = 1;

end:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Key management                                                            */
/* ------------------------------------------------------------------------ */

static OSSL_FUNC_keymgmt_new_fn rsa_keymgmt_new;
static OSSL_FUNC_keymgmt_new_fn ec_keymgmt_new;
static OSSL_FUNC_keymgmt_free_fn keymgmt_free;
static OSSL_FUNC_keymgmt_dup_fn keymgmt_dup;
static OSSL_FUNC_keymgmt_has_fn keymgmt_has;
static OSSL_FUNC_keymgmt_match_fn keymgmt_match;
static OSSL_FUNC_keymgmt_import_fn keymgmt_import;
static OSSL_FUNC_keymgmt_import_types_fn rsa_keymgmt_import_types;
static OSSL_FUNC_keymgmt_import_types_fn ec_keymgmt_import_types;
static OSSL_FUNC_keymgmt_export_fn keymgmt_export;
static OSSL_FUNC_keymgmt_export_types_fn rsa_keymgmt_export_types;
static OSSL_FUNC_keymgmt_export_types_fn ec_keymgmt_export_types;
static OSSL_FUNC_keymgmt_get_params_fn keymgmt_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn rsa_keymgmt_gettable_params;
static OSSL_FUNC_keymgmt_gettable_params_fn ec_keymgmt_gettable_params;
static OSSL_FUNC_keymgmt_query_operation_name_fn rsa_keymgmt_query_operation_name;
static OSSL_FUNC_keymgmt_query_operation_name_fn ec_keymgmt_query_operation_name;

static void *rsa_keymgmt_new(void *provctx)
{
    (void)provctx;
    return key_new(KEY_TYPE_RSA);
}

static void *ec_keymgmt_new(void *provctx)
{
    (void)provctx;
    return key_new(KEY_TYPE_EC);
}

static void keymgmt_free(void *keydata)
{
    key_free(keydata);
}

/*
 * Shares the key data instead of copying it, because it is read-only. A copy
 * without the private key would be a key that this provider cannot sign
 * with, so such copies are rejected.
 */
static void *keymgmt_dup(const void *keydata_from, int selection)
{
    token_key *key = (token_key *)keydata_from;

    if (key == NULL || key->key_ref == 0) {
        RAISE(REASON_MISSING_KEY_REFERENCE, NULL);
        return NULL;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0) {
        RAISE(REASON_INVALID_ARGUMENT, "a copy of a token key must include the private key");
        return NULL;
    }
    key_up_ref(key);
    return key;
}

static int keymgmt_has(const void *keydata, int selection)
{
    const token_key *key = keydata;
    int has = 1;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0)
        has = has && key->public_key != NULL;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        has = has && key->key_ref != 0;
    if ((selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS) != 0 && key->type == KEY_TYPE_EC)
        has = has && key->curve != NULL;
    return has;
}

/*
 * Compares the public halves. Two token keys with the same public key are
 * the same key pair even when their references differ.
 */
static int keymgmt_match(const void *keydata1, const void *keydata2, int selection)
{
    const token_key *key1 = keydata1;
    const token_key *key2 = keydata2;

    if (key1 == NULL || key2 == NULL || key1->public_key == NULL || key2->public_key == NULL)
        return 0;
    if (key1->type != key2->type)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0)
        return EVP_PKEY_eq(key1->public_key, key2->public_key) == 1;
    if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0)
        return EVP_PKEY_parameters_eq(key1->public_key, key2->public_key) == 1;
    return 1;
}

/*
 * Builds the public key from params with another provider. That provider
 * checks the values (an EC point must lie on its curve) and computes the
 * sizes that OpenSSL reports for such a key.
 */
static EVP_PKEY *build_public_key(const char *type_name, const OSSL_PARAM params[])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type_name, PUBLIC_KEY_PROPERTY_QUERY);
    EVP_PKEY *public_key = NULL;

    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0
        || EVP_PKEY_fromdata(ctx, &public_key, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) <= 0) {
        RAISE(REASON_INVALID_PUBLIC_KEY, "the %s public key parameters were rejected", type_name);
        public_key = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return public_key;
}

static int fill_rsa_fields(token_key *key)
{
    if (key->bits < MIN_RSA_BITS) {
        RAISE(REASON_KEY_TOO_SMALL, "RSA key has %d bits, at least %d are required", key->bits,
              MIN_RSA_BITS);
        return 0;
    }
    if (!EVP_PKEY_get_bn_param(key->public_key, OSSL_PKEY_PARAM_RSA_N, &key->n)
        || !EVP_PKEY_get_bn_param(key->public_key, OSSL_PKEY_PARAM_RSA_E, &key->e)) {
        RAISE(REASON_INVALID_PUBLIC_KEY, "RSA modulus or exponent missing");
        return 0;
    }
    return 1;
}

static int fill_ec_fields(token_key *key)
{
    char group_name[64];
    size_t point_len = 0;

    if (!EVP_PKEY_get_group_name(key->public_key, group_name, sizeof(group_name), NULL)) {
        RAISE(REASON_UNSUPPORTED_CURVE, "the EC key has no named curve");
        return 0;
    }
    key->curve = find_curve(group_name);
    if (key->curve == NULL) {
        RAISE(REASON_UNSUPPORTED_CURVE, "curve %s; supported are P-256, P-384 and P-521",
              group_name);
        return 0;
    }

    /* The key was built without a point format, so it encodes uncompressed points. */
    if (!EVP_PKEY_get_octet_string_param(key->public_key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                         NULL, 0, &point_len)
        || point_len == 0) {
        RAISE(REASON_INVALID_PUBLIC_KEY, "EC public point missing");
        return 0;
    }
    key->encoded_point = OPENSSL_malloc(point_len);
    if (key->encoded_point == NULL
        || !EVP_PKEY_get_octet_string_param(key->public_key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                            key->encoded_point, point_len,
                                            &key->encoded_point_len)) {
        RAISE(REASON_INTERNAL_ERROR, "cannot read the EC public point");
        return 0;
    }
    return 1;
}

/*
 * Fills empty key data from the public key parameters (n and e, or group
 * and pub) and PARAM_KEY_REF. Without a key reference the import fails,
 * because every key of this provider lives in a token. A key that
 * fails here keeps key_ref at 0, so freeing it does not call the release
 * callback.
 */
static int keymgmt_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    token_key *key = keydata;
    const OSSL_PARAM *ref_param;
    uint64_t key_ref = 0;

    if (key == NULL || params == NULL) {
        RAISE(REASON_INVALID_ARGUMENT, NULL);
        return 0;
    }
    if (key->public_key != NULL || key->key_ref != 0) {
        RAISE(REASON_KEY_ALREADY_SET, "token key data is read-only after import");
        return 0;
    }
    /*
     * EVP_PKEY_eq (and so X509_check_private_key) first tries to copy the
     * other, public-only key into this provider without selecting the
     * private key, and compares the other way round when that fails.
     * Declining quietly keeps the error queue clean when the comparison
     * then succeeds.
     */
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0) {
        RAISE(REASON_INVALID_ARGUMENT, "a token key import must select the public key too");
        return 0;
    }

    ref_param = OSSL_PARAM_locate_const(params, PARAM_KEY_REF);
    if (ref_param == NULL || !OSSL_PARAM_get_uint64(ref_param, &key_ref) || key_ref == 0) {
        RAISE(REASON_MISSING_KEY_REFERENCE, "parameter \"%s\" must be a nonzero uint64",
              PARAM_KEY_REF);
        return 0;
    }

    key->public_key = build_public_key(key->type == KEY_TYPE_RSA ? "RSA" : "EC", params);
    if (key->public_key == NULL)
        return 0;
    key->bits = EVP_PKEY_get_bits(key->public_key);
    key->security_bits = EVP_PKEY_get_security_bits(key->public_key);
    key->max_size = EVP_PKEY_get_size(key->public_key);
    if (key->bits <= 0 || key->max_size <= 0) {
        RAISE(REASON_INVALID_PUBLIC_KEY, "cannot determine the key size");
        return 0;
    }

    if (!(key->type == KEY_TYPE_RSA ? fill_rsa_fields(key) : fill_ec_fields(key)))
        return 0;

    key->key_ref = key_ref;
    return 1;
}

static const OSSL_PARAM rsa_import_param_types[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_uint64(PARAM_KEY_REF, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_import_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_uint64(PARAM_KEY_REF, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_keymgmt_import_types(int selection)
{
    (void)selection;
    return rsa_import_param_types;
}

static const OSSL_PARAM *ec_keymgmt_import_types(int selection)
{
    (void)selection;
    return ec_import_param_types;
}

/*
 * Exports the public half. A selection that includes the private key fails:
 * handing out only the public half would let OpenSSL move the key to
 * another provider, which then fails with "missing private key".
 */
static int keymgmt_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
    token_key *key = keydata;
    OSSL_PARAM_BLD *builder = NULL;
    OSSL_PARAM *params = NULL;
    int pushed = 1;
    int ok = 0;

    if (key == NULL || key->public_key == NULL || param_cb == NULL) {
        RAISE(REASON_INVALID_ARGUMENT, NULL);
        return 0;
    }
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0) {
        RAISE(REASON_PRIVATE_KEY_NOT_EXPORTABLE, NULL);
        return 0;
    }

    builder = OSSL_PARAM_BLD_new();
    if (builder == NULL)
        goto end;
    if (key->type == KEY_TYPE_RSA) {
        if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0) {
            pushed = OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_N, key->n)
                     && OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_E, key->e);
        }
    } else {
        if ((selection & OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS) != 0) {
            pushed = OSSL_PARAM_BLD_push_utf8_string(builder, OSSL_PKEY_PARAM_GROUP_NAME,
                                                     key->curve->group_name, 0);
        }
        if (pushed && (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0) {
            pushed = OSSL_PARAM_BLD_push_octet_string(builder, OSSL_PKEY_PARAM_PUB_KEY,
                                                      key->encoded_point,
                                                      key->encoded_point_len);
        }
    }
    if (!pushed || (params = OSSL_PARAM_BLD_to_param(builder)) == NULL) {
        RAISE(REASON_INTERNAL_ERROR, "cannot build the export parameters");
        goto end;
    }
    ok = param_cb(params, cbarg);

end:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(builder);
    return ok;
}

static const OSSL_PARAM rsa_export_param_types[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_export_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_keymgmt_export_types(int selection)
{
    (void)selection;
    return rsa_export_param_types;
}

static const OSSL_PARAM *ec_keymgmt_export_types(int selection)
{
    (void)selection;
    return ec_export_param_types;
}

static int set_int_param(OSSL_PARAM params[], const char *name, int value)
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

    return p == NULL || OSSL_PARAM_set_int(p, value);
}

static int set_utf8_param(OSSL_PARAM params[], const char *name, const char *value)
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

    return p == NULL || OSSL_PARAM_set_utf8_string(p, value);
}

static int set_octet_param(OSSL_PARAM params[], const char *name, const unsigned char *value,
                           size_t len)
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

    return p == NULL || OSSL_PARAM_set_octet_string(p, value, len);
}

static int set_bn_param(OSSL_PARAM params[], const char *name, const BIGNUM *value)
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

    return p == NULL || OSSL_PARAM_set_BN(p, value);
}

static int keymgmt_get_params(void *keydata, OSSL_PARAM params[])
{
    token_key *key = keydata;
    OSSL_PARAM *p;

    if (key == NULL || key->public_key == NULL)
        return 0;

    if (!set_int_param(params, OSSL_PKEY_PARAM_BITS, key->bits)
        || !set_int_param(params, OSSL_PKEY_PARAM_SECURITY_BITS, key->security_bits)
        || !set_int_param(params, OSSL_PKEY_PARAM_MAX_SIZE, key->max_size)
        || !set_utf8_param(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST, DEFAULT_DIGEST_NAME))
        return 0;
    p = OSSL_PARAM_locate(params, PARAM_KEY_REF);
    if (p != NULL && !OSSL_PARAM_set_uint64(p, key->key_ref))
        return 0;

    if (key->type == KEY_TYPE_RSA) {
        return set_bn_param(params, OSSL_PKEY_PARAM_RSA_N, key->n)
               && set_bn_param(params, OSSL_PKEY_PARAM_RSA_E, key->e);
    }
    return set_utf8_param(params, OSSL_PKEY_PARAM_GROUP_NAME, key->curve->group_name)
           && set_octet_param(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, key->encoded_point,
                              key->encoded_point_len)
           && set_octet_param(params, OSSL_PKEY_PARAM_PUB_KEY, key->encoded_point,
                              key->encoded_point_len)
           && set_utf8_param(params, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                             OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED)
           && set_utf8_param(params, OSSL_PKEY_PARAM_EC_ENCODING, OSSL_PKEY_EC_ENCODING_GROUP);
}

static const OSSL_PARAM rsa_gettable_param_types[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_uint64(PARAM_KEY_REF, NULL),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_gettable_param_types[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_uint64(PARAM_KEY_REF, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_keymgmt_gettable_params(void *provctx)
{
    (void)provctx;
    return rsa_gettable_param_types;
}

static const OSSL_PARAM *ec_keymgmt_gettable_params(void *provctx)
{
    (void)provctx;
    return ec_gettable_param_types;
}

/* libssl looks up the signature algorithm of a key by this name. */
static const char *rsa_keymgmt_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "RSA" : NULL;
}

static const char *ec_keymgmt_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : NULL;
}

/* ------------------------------------------------------------------------ */
/* Signature                                                                 */
/* ------------------------------------------------------------------------ */

/* Salt length value meaning "as long as the digest", as in OpenSSL. */
#define SALT_LENGTH_DIGEST RSA_PSS_SALTLEN_DIGEST

typedef struct {
    key_type expected_type;
    token_key *key;
    /* Digest of the data; NULL after sign_init until a "digest" parameter names one. */
    EVP_MD *md;
    /* Running hash; set only between digest_sign_init and digest_sign_final. */
    EVP_MD_CTX *md_ctx;
    /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING. */
    int pad_mode;
    /* SALT_LENGTH_DIGEST or a length in bytes, checked against the digest when signing. */
    int salt_length;
    /* MGF1 digest; NID_undef means the signature digest. */
    int mgf1_nid;
} sign_ctx;

static OSSL_FUNC_signature_newctx_fn rsa_signature_newctx;
static OSSL_FUNC_signature_newctx_fn ecdsa_signature_newctx;
static OSSL_FUNC_signature_freectx_fn signature_freectx;
static OSSL_FUNC_signature_dupctx_fn signature_dupctx;
static OSSL_FUNC_signature_sign_init_fn signature_sign_init;
static OSSL_FUNC_signature_sign_fn signature_sign;
static OSSL_FUNC_signature_digest_sign_init_fn signature_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_update_fn signature_digest_sign_update;
static OSSL_FUNC_signature_digest_sign_final_fn signature_digest_sign_final;
static OSSL_FUNC_signature_set_ctx_params_fn signature_set_ctx_params;
static OSSL_FUNC_signature_settable_ctx_params_fn rsa_signature_settable_ctx_params;
static OSSL_FUNC_signature_settable_ctx_params_fn ecdsa_signature_settable_ctx_params;
static OSSL_FUNC_signature_get_ctx_params_fn signature_get_ctx_params;
static OSSL_FUNC_signature_gettable_ctx_params_fn rsa_signature_gettable_ctx_params;
static OSSL_FUNC_signature_gettable_ctx_params_fn ecdsa_signature_gettable_ctx_params;

static int is_supported_digest(int nid)
{
    return nid == NID_sha1 || nid == NID_sha224 || nid == NID_sha256 || nid == NID_sha384
           || nid == NID_sha512;
}

/* Fetches a digest for in-process hashing, because the token receives only the result. */
static EVP_MD *fetch_supported_digest(const char *name)
{
    EVP_MD *md = EVP_MD_fetch(NULL, name, NULL);

    if (md == NULL || !is_supported_digest(EVP_MD_get_type(md))) {
        EVP_MD_free(md);
        RAISE(REASON_UNSUPPORTED_DIGEST, "%s; supported are SHA1, SHA224, SHA256, SHA384, SHA512",
              name);
        return NULL;
    }
    return md;
}

static void *new_sign_ctx(key_type expected_type)
{
    sign_ctx *ctx = OPENSSL_zalloc(sizeof(*ctx));

    if (ctx == NULL)
        return NULL;
    ctx->expected_type = expected_type;
    ctx->pad_mode = RSA_PKCS1_PADDING;
    ctx->salt_length = SALT_LENGTH_DIGEST;
    ctx->mgf1_nid = NID_undef;
    return ctx;
}

static void *rsa_signature_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return new_sign_ctx(KEY_TYPE_RSA);
}

static void *ecdsa_signature_newctx(void *provctx, const char *propq)
{
    (void)provctx;
    (void)propq;
    return new_sign_ctx(KEY_TYPE_EC);
}

static void signature_freectx(void *vctx)
{
    sign_ctx *ctx = vctx;

    if (ctx == NULL)
        return;
    EVP_MD_CTX_free(ctx->md_ctx);
    EVP_MD_free(ctx->md);
    key_free(ctx->key);
    OPENSSL_free(ctx);
}

/*
 * Copies a context including its hash state. EVP_DigestSignFinal signs on
 * such a copy so that the caller can keep hashing into the original.
 */
static void *signature_dupctx(void *vctx)
{
    sign_ctx *source = vctx;
    sign_ctx *copy;

    if (source == NULL)
        return NULL;
    copy = OPENSSL_memdup(source, sizeof(*source));
    if (copy == NULL)
        return NULL;
    copy->key = NULL;
    copy->md = NULL;
    copy->md_ctx = NULL;

    if (source->md != NULL) {
        if (!EVP_MD_up_ref(source->md))
            goto fail;
        copy->md = source->md;
    }
    if (source->md_ctx != NULL) {
        copy->md_ctx = EVP_MD_CTX_new();
        if (copy->md_ctx == NULL || !EVP_MD_CTX_copy_ex(copy->md_ctx, source->md_ctx))
            goto fail;
    }
    if (source->key != NULL) {
        key_up_ref(source->key);
        copy->key = source->key;
    }
    return copy;

fail:
    RAISE(REASON_INTERNAL_ERROR, "cannot copy the signature context");
    signature_freectx(copy);
    return NULL;
}

/* Reads "pad-mode", which EVP sends as an int (RSA_*_PADDING) or as a name. */
static int read_pad_mode(const OSSL_PARAM *p, int *pad_mode)
{
    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *name = NULL;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) {
            RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
            return 0;
        }
        if (strcmp(name, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0) {
            *pad_mode = RSA_PKCS1_PADDING;
        } else if (strcmp(name, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0) {
            *pad_mode = RSA_PKCS1_PSS_PADDING;
        } else {
            RAISE(REASON_UNSUPPORTED_PADDING, "%s; supported are pkcs1 and pss", name);
            return 0;
        }
        return 1;
    }

    int mode;

    if (!OSSL_PARAM_get_int(p, &mode)) {
        RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
        return 0;
    }
    if (mode != RSA_PKCS1_PADDING && mode != RSA_PKCS1_PSS_PADDING) {
        RAISE(REASON_UNSUPPORTED_PADDING, "mode %d; supported are %d (PKCS#1 v1.5) and %d (PSS)",
              mode, RSA_PKCS1_PADDING, RSA_PKCS1_PSS_PADDING);
        return 0;
    }
    *pad_mode = mode;
    return 1;
}

/*
 * Reads "saltlen", which EVP sends as an int (RSA_PSS_SALTLEN_* or a byte
 * count) or as a string ("digest", "max", "auto" or a decimal byte count).
 * Only the digest length is accepted, which is what TLS 1.2 and 1.3 use.
 */
static int read_salt_length(const OSSL_PARAM *p, int *salt_length)
{
    int length;

    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *text = NULL;
        char *end = NULL;
        long parsed;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &text)) {
            RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
            return 0;
        }
        if (strcmp(text, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0) {
            *salt_length = SALT_LENGTH_DIGEST;
            return 1;
        }
        parsed = strtol(text, &end, 10);
        if (end == text || *end != '\0' || parsed < 0 || parsed > INT_MAX) {
            RAISE(REASON_INVALID_SALT_LENGTH, "\"%s\"; only \"digest\" is supported", text);
            return 0;
        }
        length = (int)parsed;
    } else if (!OSSL_PARAM_get_int(p, &length)) {
        RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
        return 0;
    }

    if (length < 0 && length != SALT_LENGTH_DIGEST) {
        RAISE(REASON_INVALID_SALT_LENGTH, "%d; only the digest length is supported", length);
        return 0;
    }
    *salt_length = length;
    return 1;
}

/* Checks the PSS settings against the digest once both are known. */
static int check_pss_settings(const sign_ctx *ctx, int digest_nid, size_t digest_len)
{
    if (ctx->salt_length != SALT_LENGTH_DIGEST && (size_t)ctx->salt_length != digest_len) {
        RAISE(REASON_INVALID_SALT_LENGTH, "%d bytes; the digest has %zu and only that is supported",
              ctx->salt_length, digest_len);
        return 0;
    }
    if (ctx->mgf1_nid != NID_undef && ctx->mgf1_nid != digest_nid) {
        RAISE(REASON_INVALID_MGF1_DIGEST, "%s differs from the signature digest %s",
              OBJ_nid2sn(ctx->mgf1_nid), OBJ_nid2sn(digest_nid));
        return 0;
    }
    return 1;
}

static int signature_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    sign_ctx *ctx = vctx;
    const OSSL_PARAM *p;

    if (ctx == NULL)
        return 0;
    if (params == NULL)
        return 1;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL) {
        const char *name = NULL;
        EVP_MD *md;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) {
            RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
            return 0;
        }
        if (ctx->md_ctx != NULL) {
            /* The data is already being hashed, so only the same digest can be named. */
            if (ctx->md == NULL || !EVP_MD_is_a(ctx->md, name)) {
                RAISE(REASON_UNSUPPORTED_DIGEST, "%s; the digest cannot change after digest_sign_init",
                      name);
                return 0;
            }
        } else {
            md = fetch_supported_digest(name);
            if (md == NULL)
                return 0;
            EVP_MD_free(ctx->md);
            ctx->md = md;
        }
    }

    if (ctx->expected_type != KEY_TYPE_RSA)
        return 1;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL && !read_pad_mode(p, &ctx->pad_mode))
        return 0;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL && !read_salt_length(p, &ctx->salt_length))
        return 0;

    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        const char *name = NULL;
        EVP_MD *mgf1_md;

        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name)) {
            RAISE(REASON_INVALID_ARGUMENT, "unreadable \"%s\"", p->key);
            return 0;
        }
        mgf1_md = fetch_supported_digest(name);
        if (mgf1_md == NULL)
            return 0;
        ctx->mgf1_nid = EVP_MD_get_type(mgf1_md);
        EVP_MD_free(mgf1_md);
    }

    /* Report a mismatch now when the digest is known; signing checks again. */
    if (ctx->pad_mode == RSA_PKCS1_PSS_PADDING && ctx->md != NULL)
        return check_pss_settings(ctx, EVP_MD_get_type(ctx->md), (size_t)EVP_MD_get_size(ctx->md));
    return 1;
}

/*
 * "properties" and "mgf1-properties" are accepted and ignored, because
 * digests are fetched without a property query.
 */
static const OSSL_PARAM rsa_settable_ctx_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL),
    OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ecdsa_settable_ctx_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_signature_settable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return rsa_settable_ctx_param_types;
}

static const OSSL_PARAM *ecdsa_signature_settable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return ecdsa_settable_ctx_param_types;
}

static int signature_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    sign_ctx *ctx = vctx;
    OSSL_PARAM *p;

    if (ctx == NULL)
        return 0;

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && ctx->md != NULL && !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(ctx->md)))
        return 0;

    if (ctx->expected_type != KEY_TYPE_RSA)
        return 1;

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL) {
        int ok;

        if (p->data_type == OSSL_PARAM_UTF8_STRING)
            ok = OSSL_PARAM_set_utf8_string(p, ctx->pad_mode == RSA_PKCS1_PSS_PADDING
                                                   ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                   : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
        else
            ok = OSSL_PARAM_set_int(p, ctx->pad_mode);
        if (!ok)
            return 0;
    }

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL) {
        int ok;

        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            char text[16];

            if (ctx->salt_length == SALT_LENGTH_DIGEST)
                snprintf(text, sizeof(text), "%s", OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST);
            else
                snprintf(text, sizeof(text), "%d", ctx->salt_length);
            ok = OSSL_PARAM_set_utf8_string(p, text);
        } else {
            ok = OSSL_PARAM_set_int(p, ctx->salt_length);
        }
        if (!ok)
            return 0;
    }

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL) {
        int mgf1_nid = ctx->mgf1_nid;

        if (mgf1_nid == NID_undef && ctx->md != NULL)
            mgf1_nid = EVP_MD_get_type(ctx->md);
        if (mgf1_nid != NID_undef && !OSSL_PARAM_set_utf8_string(p, OBJ_nid2sn(mgf1_nid)))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM rsa_gettable_ctx_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL),
    OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ecdsa_gettable_ctx_param_types[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *rsa_signature_gettable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return rsa_gettable_ctx_param_types;
}

static const OSSL_PARAM *ecdsa_signature_gettable_ctx_params(void *vctx, void *provctx)
{
    (void)vctx;
    (void)provctx;
    return ecdsa_gettable_ctx_param_types;
}

/*
 * Attaches the key and resets the per-operation state. Does not contact
 * the token: libssl initializes contexts that it frees without signing.
 */
static int attach_key(sign_ctx *ctx, token_key *key)
{
    if (key == NULL || key->type != ctx->expected_type) {
        RAISE(REASON_UNSUPPORTED_KEY_TYPE, "the key does not fit this signature algorithm");
        return 0;
    }
    if (key->key_ref == 0) {
        RAISE(REASON_MISSING_KEY_REFERENCE, NULL);
        return 0;
    }

    key_up_ref(key);
    key_free(ctx->key);
    ctx->key = key;

    EVP_MD_CTX_free(ctx->md_ctx);
    ctx->md_ctx = NULL;
    EVP_MD_free(ctx->md);
    ctx->md = NULL;
    ctx->pad_mode = RSA_PKCS1_PADDING;
    ctx->salt_length = SALT_LENGTH_DIGEST;
    ctx->mgf1_nid = NID_undef;
    return 1;
}

static int signature_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    sign_ctx *ctx = vctx;

    if (ctx == NULL || !attach_key(ctx, provkey))
        return 0;
    return signature_set_ctx_params(ctx, params);
}

static int signature_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                                      const OSSL_PARAM params[])
{
    sign_ctx *ctx = vctx;

    if (ctx == NULL || !attach_key(ctx, provkey))
        return 0;

    ctx->md = fetch_supported_digest(mdname != NULL && mdname[0] != '\0' ? mdname
                                                                        : DEFAULT_DIGEST_NAME);
    if (ctx->md == NULL)
        return 0;
    if (!signature_set_ctx_params(ctx, params))
        return 0;

    ctx->md_ctx = EVP_MD_CTX_new();
    if (ctx->md_ctx == NULL || !EVP_DigestInit_ex2(ctx->md_ctx, ctx->md, NULL)) {
        RAISE(REASON_INTERNAL_ERROR, "cannot start the %s hash", EVP_MD_get0_name(ctx->md));
        return 0;
    }
    return 1;
}

static int signature_digest_sign_update(void *vctx, const unsigned char *data, size_t datalen)
{
    sign_ctx *ctx = vctx;

    if (ctx == NULL || ctx->md_ctx == NULL) {
        RAISE(REASON_OPERATION_NOT_INITIALIZED, "digest_sign_update before digest_sign_init");
        return 0;
    }
    return EVP_DigestUpdate(ctx->md_ctx, data, datalen);
}

/* Copies an RSA signature right-aligned into a modulus-sized buffer. */
static int place_rsa_signature(const token_key *key, const unsigned char *token_signature,
                               size_t token_signature_len, unsigned char *sig, size_t *siglen,
                               size_t sigsize)
{
    size_t modulus_len = (size_t)key->max_size;

    if (token_signature_len == 0 || token_signature_len > modulus_len) {
        RAISE(REASON_MALFORMED_TOKEN_SIGNATURE, "RSA signature of %zu bytes for a %zu-byte modulus",
              token_signature_len, modulus_len);
        return 0;
    }
    if (sigsize < modulus_len) {
        RAISE(REASON_SIGNATURE_BUFFER_TOO_SMALL, "need %zu bytes, have %zu", modulus_len, sigsize);
        return 0;
    }
    /* RSA signatures have the modulus length; a token may drop leading zero bytes. */
    memset(sig, 0, modulus_len - token_signature_len);
    memcpy(sig + modulus_len - token_signature_len, token_signature, token_signature_len);
    *siglen = modulus_len;
    return 1;
}

/* Asks the token to sign a finished digest and writes the signature in TLS format. */
static int sign_digest(sign_ctx *ctx, int digest_nid, const unsigned char *digest,
                       size_t digest_len, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    token_key *key = ctx->key;
    unsigned char *token_signature = NULL;
    size_t token_capacity = (size_t)key->max_size;
    size_t token_signature_len = token_capacity;
    int scheme;
    int ok = 0;

    if (key->type == KEY_TYPE_EC) {
        scheme = TOKENTLS_SCHEME_ECDSA;
    } else if (ctx->pad_mode == RSA_PKCS1_PSS_PADDING) {
        if (!check_pss_settings(ctx, digest_nid, digest_len))
            return 0;
        scheme = TOKENTLS_SCHEME_RSA_PSS;
    } else {
        scheme = TOKENTLS_SCHEME_RSA_PKCS1;
    }

    token_signature = OPENSSL_malloc(token_capacity);
    if (token_signature == NULL) {
        RAISE(REASON_INTERNAL_ERROR, "out of memory");
        return 0;
    }

    if (sign_callback == NULL
        || !sign_callback(key->key_ref, scheme, digest_nid, digest, digest_len, token_signature,
                          &token_signature_len)) {
        RAISE(REASON_TOKEN_SIGNING_FAILED, "key reference %" PRIu64 ", %s with %s", key->key_ref,
              scheme == TOKENTLS_SCHEME_ECDSA  ? "ECDSA"
              : scheme == TOKENTLS_SCHEME_RSA_PSS ? "RSA-PSS"
                                                  : "RSA PKCS#1 v1.5",
              OBJ_nid2sn(digest_nid));
        goto end;
    }
    if (token_signature_len > token_capacity) {
        RAISE(REASON_MALFORMED_TOKEN_SIGNATURE,
              "the sign callback reported %zu bytes for a %zu-byte buffer", token_signature_len,
              token_capacity);
        goto end;
    }

    if (key->type == KEY_TYPE_EC)
        ok = tokentls_ecdsa_signature_to_der(token_signature, token_signature_len,
                                             key->curve->order_len, sig, sigsize, siglen);
    else
        ok = place_rsa_signature(key, token_signature, token_signature_len, sig, siglen, sigsize);

end:
    OPENSSL_free(token_signature);
    return ok;
}

static int signature_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen,
                                       size_t sigsize)
{
    sign_ctx *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;

    if (ctx == NULL || ctx->key == NULL || ctx->md_ctx == NULL) {
        RAISE(REASON_OPERATION_NOT_INITIALIZED, "digest_sign_final before digest_sign_init");
        return 0;
    }
    if (sig == NULL) {
        *siglen = (size_t)ctx->key->max_size;
        return 1;
    }
    if (!EVP_DigestFinal_ex(ctx->md_ctx, digest, &digest_len)) {
        RAISE(REASON_INTERNAL_ERROR, "cannot finish the %s hash", EVP_MD_get0_name(ctx->md));
        return 0;
    }
    return sign_digest(ctx, EVP_MD_get_type(ctx->md), digest, digest_len, sig, siglen, sigsize);
}

/* Returns the NID of the supported digest with this length, or NID_undef. */
static int digest_nid_for_length(size_t digest_len)
{
    switch (digest_len) {
    case 20:
        return NID_sha1;
    case 28:
        return NID_sha224;
    case 32:
        return NID_sha256;
    case 48:
        return NID_sha384;
    case 64:
        return NID_sha512;
    default:
        return NID_undef;
    }
}

/*
 * Signs a digest that the caller computed. Without a "digest" parameter the
 * digest algorithm is inferred from the length, which is unambiguous for
 * the supported SHA-1 and SHA-2 digests.
 */
static int signature_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                          const unsigned char *tbs, size_t tbslen)
{
    sign_ctx *ctx = vctx;
    int digest_nid;

    if (ctx == NULL || ctx->key == NULL) {
        RAISE(REASON_OPERATION_NOT_INITIALIZED, "sign before sign_init");
        return 0;
    }
    if (sig == NULL) {
        *siglen = (size_t)ctx->key->max_size;
        return 1;
    }

    if (ctx->md != NULL) {
        digest_nid = EVP_MD_get_type(ctx->md);
        if (tbslen != (size_t)EVP_MD_get_size(ctx->md)) {
            RAISE(REASON_INVALID_DIGEST_LENGTH, "%zu bytes for %s", tbslen,
                  EVP_MD_get0_name(ctx->md));
            return 0;
        }
    } else {
        digest_nid = digest_nid_for_length(tbslen);
        if (digest_nid == NID_undef) {
            RAISE(REASON_INVALID_DIGEST_LENGTH, "%zu bytes matches no supported digest", tbslen);
            return 0;
        }
    }
    return sign_digest(ctx, digest_nid, tbs, tbslen, sig, siglen, sigsize);
}

/* ------------------------------------------------------------------------ */
/* Dispatch tables and provider entry point                                  */
/* ------------------------------------------------------------------------ */

/*
 * OpenSSL silently drops a key management table without "has" or with only
 * half of a pair (import/import_types, export/export_types,
 * get_params/gettable_params), so these tables keep every pair complete.
 */
static const OSSL_DISPATCH rsa_keymgmt_functions[] = {
    { OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))rsa_keymgmt_new },
    { OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))keymgmt_free },
    { OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))keymgmt_dup },
    { OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))keymgmt_has },
    { OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))keymgmt_match },
    { OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))keymgmt_import },
    { OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))rsa_keymgmt_import_types },
    { OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))keymgmt_export },
    { OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))rsa_keymgmt_export_types },
    { OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))keymgmt_get_params },
    { OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))rsa_keymgmt_gettable_params },
    { OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))rsa_keymgmt_query_operation_name },
    { 0, NULL },
};

static const OSSL_DISPATCH ec_keymgmt_functions[] = {
    { OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))ec_keymgmt_new },
    { OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))keymgmt_free },
    { OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))keymgmt_dup },
    { OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))keymgmt_has },
    { OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))keymgmt_match },
    { OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))keymgmt_import },
    { OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))ec_keymgmt_import_types },
    { OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))keymgmt_export },
    { OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))ec_keymgmt_export_types },
    { OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))keymgmt_get_params },
    { OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))ec_keymgmt_gettable_params },
    { OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))ec_keymgmt_query_operation_name },
    { 0, NULL },
};

static const OSSL_DISPATCH rsa_signature_functions[] = {
    { OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))rsa_signature_newctx },
    { OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))signature_freectx },
    { OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))signature_dupctx },
    { OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))signature_sign_init },
    { OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))signature_sign },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))signature_digest_sign_init },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))signature_digest_sign_update },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))signature_digest_sign_final },
    { OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))signature_set_ctx_params },
    { OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))rsa_signature_settable_ctx_params },
    { OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))signature_get_ctx_params },
    { OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))rsa_signature_gettable_ctx_params },
    { 0, NULL },
};

static const OSSL_DISPATCH ecdsa_signature_functions[] = {
    { OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))ecdsa_signature_newctx },
    { OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))signature_freectx },
    { OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))signature_dupctx },
    { OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))signature_sign_init },
    { OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))signature_sign },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))signature_digest_sign_init },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))signature_digest_sign_update },
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))signature_digest_sign_final },
    { OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))signature_set_ctx_params },
    { OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))ecdsa_signature_settable_ctx_params },
    { OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))signature_get_ctx_params },
    { OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))ecdsa_signature_gettable_ctx_params },
    { 0, NULL },
};

/* libssl classifies keys by these names, so they must be OpenSSL's own. */
static const OSSL_ALGORITHM keymgmt_algorithms[] = {
    { "RSA:rsaEncryption:1.2.840.113549.1.1.1", PROVIDER_PROPERTY, rsa_keymgmt_functions,
      "RSA key whose private half is in a PKCS#11 token" },
    { "EC:id-ecPublicKey:1.2.840.10045.2.1", PROVIDER_PROPERTY, ec_keymgmt_functions,
      "EC key whose private half is in a PKCS#11 token" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM signature_algorithms[] = {
    { "RSA:rsaEncryption:1.2.840.113549.1.1.1", PROVIDER_PROPERTY, rsa_signature_functions,
      "RSA PKCS#1 v1.5 and PSS signatures made by a PKCS#11 token" },
    { "ECDSA", PROVIDER_PROPERTY, ecdsa_signature_functions,
      "ECDSA signatures made by a PKCS#11 token" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM *provider_query_operation(void *provctx, int operation_id,
                                                      int *no_store)
{
    (void)provctx;
    *no_store = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return keymgmt_algorithms;
    case OSSL_OP_SIGNATURE:
        return signature_algorithms;
    default:
        return NULL;
    }
}

static const OSSL_PARAM provider_param_types[] = {
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
    OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *provider_gettable_params(void *provctx)
{
    (void)provctx;
    return provider_param_types;
}

static int provider_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    (void)provctx;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "TokenTLS PKCS#11 key provider"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static const OSSL_ITEM *provider_get_reason_strings(void *provctx)
{
    (void)provctx;
    return reason_strings;
}

static const OSSL_DISPATCH provider_functions[] = {
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))provider_query_operation },
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))provider_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))provider_get_params },
    { OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))provider_get_reason_strings },
    { 0, NULL },
};

static int provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                         const OSSL_DISPATCH **out, void **provctx)
{
    for (; in != NULL && in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            core_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            core_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            core_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        default:
            break;
        }
    }
    core_handle = handle;
    *out = provider_functions;
    /* The provider keeps no per-context state; the handle only makes provctx non-NULL. */
    *provctx = (void *)handle;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Public functions                                                          */
/* ------------------------------------------------------------------------ */

static int load_providers(void)
{
    if (!OSSL_PROVIDER_add_builtin(NULL, TOKENTLS_PROVIDER_NAME, provider_init))
        return 0;
    /*
     * Loading any provider explicitly turns off the implicit default
     * provider. Loading "default" first also keeps it first among equal
     * candidates, so fetches without a property query stay with it.
     * Both stay loaded for the life of the process, so the returned
     * OSSL_PROVIDER pointers are not kept (LeakSanitizer reports them).
     */
    if (OSSL_PROVIDER_load(NULL, "default") == NULL)
        return 0;
    if (OSSL_PROVIDER_load(NULL, TOKENTLS_PROVIDER_NAME) == NULL)
        return 0;
    return 1;
}

int tokentls_provider_load(tokentls_sign_callback sign, tokentls_release_callback release)
{
    int result;

    if (sign == NULL) {
        RAISE(REASON_INVALID_ARGUMENT, "the sign callback is NULL");
        return 0;
    }

    pthread_mutex_lock(&load_mutex);
    if (!load_attempted) {
        load_attempted = 1;
        sign_callback = sign;
        release_callback = release;
        load_result = load_providers();
        atomic_store(&provider_ready, load_result);
    } else if (!load_result) {
        RAISE(REASON_PROVIDER_NOT_LOADED, "the first tokentls_provider_load call failed");
    }
    result = load_result;
    pthread_mutex_unlock(&load_mutex);
    return result;
}

/* Adds the public half of public_key to builder and returns the key management name. */
static const char *push_public_params(OSSL_PARAM_BLD *builder, const EVP_PKEY *public_key,
                                      BIGNUM **n, BIGNUM **e, unsigned char **point)
{
    if (EVP_PKEY_is_a(public_key, "RSA")) {
        if (!EVP_PKEY_get_bn_param(public_key, OSSL_PKEY_PARAM_RSA_N, n)
            || !EVP_PKEY_get_bn_param(public_key, OSSL_PKEY_PARAM_RSA_E, e)
            || !OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_N, *n)
            || !OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_E, *e)) {
            RAISE(REASON_INVALID_PUBLIC_KEY, "cannot read the RSA modulus and exponent");
            return NULL;
        }
        return "RSA";
    }

    if (EVP_PKEY_is_a(public_key, "EC")) {
        char group_name[64];
        const curve_info *curve;
        size_t point_len = 0;

        if (!EVP_PKEY_get_group_name(public_key, group_name, sizeof(group_name), NULL)) {
            RAISE(REASON_UNSUPPORTED_CURVE, "the EC key has no named curve");
            return NULL;
        }
        curve = find_curve(group_name);
        if (curve == NULL) {
            RAISE(REASON_UNSUPPORTED_CURVE, "curve %s; supported are P-256, P-384 and P-521",
                  group_name);
            return NULL;
        }
        /*
         * The builder keeps pointers to strings and buffers until
         * OSSL_PARAM_BLD_to_param, so it gets the static curve name and
         * the caller-owned point buffer, never a local array.
         */
        if (!EVP_PKEY_get_octet_string_param(public_key, OSSL_PKEY_PARAM_PUB_KEY, NULL, 0,
                                             &point_len)
            || (*point = OPENSSL_malloc(point_len)) == NULL
            || !EVP_PKEY_get_octet_string_param(public_key, OSSL_PKEY_PARAM_PUB_KEY, *point,
                                                point_len, &point_len)
            || !OSSL_PARAM_BLD_push_utf8_string(builder, OSSL_PKEY_PARAM_GROUP_NAME,
                                                curve->group_name, 0)
            || !OSSL_PARAM_BLD_push_octet_string(builder, OSSL_PKEY_PARAM_PUB_KEY, *point,
                                                 point_len)) {
            RAISE(REASON_INVALID_PUBLIC_KEY, "cannot read the EC public point");
            return NULL;
        }
        return "EC";
    }

    RAISE(REASON_UNSUPPORTED_KEY_TYPE, "%s; supported are RSA and EC",
          EVP_PKEY_get0_type_name(public_key) != NULL ? EVP_PKEY_get0_type_name(public_key)
                                                      : "unknown");
    return NULL;
}

EVP_PKEY *tokentls_provider_new_key(const EVP_PKEY *public_key, uint64_t key_ref)
{
    OSSL_PARAM_BLD *builder = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *key = NULL;
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *point = NULL;
    const char *type_name;

    if (!atomic_load(&provider_ready)) {
        RAISE(REASON_PROVIDER_NOT_LOADED, "call tokentls_provider_load first");
        return NULL;
    }
    if (public_key == NULL || key_ref == 0) {
        RAISE(REASON_INVALID_ARGUMENT, "public_key must be set and key_ref nonzero");
        return NULL;
    }

    builder = OSSL_PARAM_BLD_new();
    if (builder == NULL)
        goto end;
    type_name = push_public_params(builder, public_key, &n, &e, &point);
    if (type_name == NULL)
        goto end;
    if (!OSSL_PARAM_BLD_push_uint64(builder, PARAM_KEY_REF, key_ref)
        || (params = OSSL_PARAM_BLD_to_param(builder)) == NULL) {
        RAISE(REASON_INTERNAL_ERROR, "cannot build the key parameters");
        goto end;
    }

    ctx = EVP_PKEY_CTX_new_from_name(NULL, type_name, PROVIDER_PROPERTY);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0) {
        RAISE(REASON_INTERNAL_ERROR, "cannot fetch the %s key management of the provider",
              type_name);
        goto end;
    }
    /*
     * NOTE: if EVP_PKEY_fromdata fails after the import succeeded (only on
     * allocation failure), the freed key data calls the release callback
     * although this function returns NULL.
     */
    if (EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_KEYPAIR, params) <= 0)
        key = NULL;

end:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(builder);
    BN_free(n);
    BN_free(e);
    OPENSSL_free(point);
    return key;
}

uint64_t tokentls_provider_key_ref(const EVP_PKEY *pkey)
{
    const OSSL_PROVIDER *provider;
    uint64_t key_ref = 0;
    OSSL_PARAM params[2];

    if (pkey == NULL)
        return 0;
    provider = EVP_PKEY_get0_provider(pkey);
    if (provider == NULL || strcmp(OSSL_PROVIDER_get0_name(provider), TOKENTLS_PROVIDER_NAME) != 0)
        return 0;

    params[0] = OSSL_PARAM_construct_uint64(PARAM_KEY_REF, &key_ref);
    params[1] = OSSL_PARAM_construct_end();
    if (!EVP_PKEY_get_params(pkey, params))
        return 0;
    return key_ref;
}
