/*
 * An in-process OpenSSL 3 provider for TLS client keys whose private half
 * stays in a PKCS#11 token.
 *
 * The provider offers key management for RSA and EC and the matching
 * signature operations (RSA PKCS#1 v1.5, RSA-PSS, ECDSA). Its keys hold the
 * public half, copied from the certificate, and an opaque 64-bit reference
 * to a token key. libssl hashes the data in process; the provider hands the
 * finished digest to the sign callback, which has the token sign it.
 *
 * Every algorithm is registered with the property "provider=tokentls" and
 * the default provider is loaded first, so a fetch without a property query
 * keeps using the default provider; operations on this provider's keys come
 * here. The provider never exports a private key: an export that selects it
 * fails, and only the public half can be exported.
 */
#ifndef TOKENTLS_PROVIDER_H
#define TOKENTLS_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Signature schemes that the sign callback is asked to perform. */
typedef enum {
    /* CKM_RSA_PKCS over a DigestInfo: the callback receives the bare digest
       and must prepend the DigestInfo prefix for digest_nid. */
    TOKENTLS_SCHEME_RSA_PKCS1 = 1,
    /* CKM_RSA_PKCS_PSS, MGF1 with the same hash, salt length = digest length. */
    TOKENTLS_SCHEME_RSA_PSS = 2,
    /* CKM_ECDSA: the callback may return r||s (each half padded to the
       order's length) or a DER ECDSA-Sig-Value; the provider emits DER. */
    TOKENTLS_SCHEME_ECDSA = 3,
} tokentls_scheme;

/*
 * Signs digest (digest_len bytes, hashed with the algorithm digest_nid: one
 * of NID_sha1, NID_sha224, NID_sha256, NID_sha384, NID_sha512) with the
 * token key key_ref, using scheme.
 * On entry *signature_len is the capacity of signature: the modulus length
 * for RSA, the maximum DER signature length for ECDSA (more than r||s needs).
 * On success the callback sets it to the signature length and returns 1.
 * On failure it returns 0 and the provider raises "token signing failed".
 * Called on the thread that runs the handshake; it may block on the token.
 * Concurrent handshakes call it from several threads at once, also for the
 * same key_ref.
 */
typedef int (*tokentls_sign_callback)(uint64_t key_ref, int scheme, int digest_nid,
                                      const unsigned char *digest, size_t digest_len,
                                      unsigned char *signature, size_t *signature_len);

/*
 * Called once for each key made by tokentls_provider_new_key, when the last
 * holder of that key is freed: the EVP_PKEY, its EVP_PKEY_dup copies and any
 * signing context still using it. Runs on the thread that frees that holder.
 */
typedef void (*tokentls_release_callback)(uint64_t key_ref);

/*
 * Registers the provider as a built-in, loads OpenSSL's "default" provider
 * and then this one into the default library context, and records the
 * callbacks. sign must not be NULL; release may be NULL.
 * Safe to call more than once and from several threads: later calls return
 * the result of the first call that had a sign callback and ignore their
 * arguments. A call with a NULL sign callback fails and changes nothing.
 * Returns 1 on success, 0 on failure (the OpenSSL error queue contains the reason).
 */
int tokentls_provider_load(tokentls_sign_callback sign, tokentls_release_callback release);

/*
 * Builds an EVP_PKEY owned by this provider from public_key (RSA of at
 * least 2048 bits, or EC on P-256, P-384 or P-521; typically
 * X509_get0_pubkey of the certificate) and the token key reference key_ref,
 * which must not be 0.
 * On success the returned key owns key_ref, and release is called for it
 * when the key is freed. On failure it returns NULL, key_ref stays owned by
 * the caller, and the OpenSSL error queue contains the reason.
 */
EVP_PKEY *tokentls_provider_new_key(const EVP_PKEY *public_key, uint64_t key_ref);

/* Returns the key reference of a key built by tokentls_provider_new_key,
   or 0 when pkey does not belong to this provider. */
uint64_t tokentls_provider_key_ref(const EVP_PKEY *pkey);

/* The provider's name, as OSSL_PROVIDER_get0_name reports it. */
#define TOKENTLS_PROVIDER_NAME "tokentls"

#ifdef __cplusplus
}
#endif

#endif
