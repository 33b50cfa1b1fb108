/*
 * Functions of tokentls_provider.c that are not part of the public contract
 * but are exported so that tests can call them directly.
 */
#ifndef TOKENTLS_PROVIDER_INTERNAL_H
#define TOKENTLS_PROVIDER_INTERNAL_H

#include <stddef.h>

/*
 * Converts an ECDSA signature returned by a token into the DER
 * ECDSA-Sig-Value that TLS sends. token_signature is either r||s, each half
 * order_len bytes (the PKCS#11 CKM_ECDSA format), or already a canonical DER
 * ECDSA-Sig-Value, which is copied unchanged.
 * Writes at most der_capacity bytes to der and stores the length in *der_len.
 * Returns 1 on success and 0 when the input is malformed or der is too
 * small. The OpenSSL error queue then records which of the two failed.
 */
int tokentls_ecdsa_signature_to_der(const unsigned char *token_signature,
                                    size_t token_signature_len, size_t order_len,
                                    unsigned char *der, size_t der_capacity,
                                    size_t *der_len);

#endif
