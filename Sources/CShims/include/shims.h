/*
 * Wrappers for OpenSSL and libcurl calls that Swift cannot import: function-like
 * macros, variadic functions and composite flag constants. Each wrapper does
 * nothing but forward to the call it is named after.
 */
#ifndef TOKENTLS_SHIMS_H
#define TOKENTLS_SHIMS_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* OPENSSL_free is a macro that adds the caller's file and line. */
void tokentls_openssl_free(void *pointer);

/* BIO_get_mem_data is a macro over BIO_ctrl. Returns the length and sets *data. */
long tokentls_bio_get_mem_data(BIO *bio, char **data);

/* STACK_OF(X509) accessors are generated inline functions and macros. */
int tokentls_x509_stack_count(const STACK_OF(X509) *stack);
X509 *tokentls_x509_stack_value(const STACK_OF(X509) *stack, int index);
STACK_OF(X509) *tokentls_x509_stack_new(void);
/* Pushes certificate and takes its reference; returns 0 on failure. */
int tokentls_x509_stack_push(STACK_OF(X509) *stack, X509 *certificate);
void tokentls_x509_stack_free_all(STACK_OF(X509) *stack);

/* X509_NAME_print_ex with the flags that print "CN=a, O=b", most specific first,
   keeping UTF-8 as is. The result is allocated with OPENSSL_malloc, or NULL. */
char *tokentls_x509_name_string(const X509_NAME *name);

/* The SSL_CTX_* controls below are macros over SSL_CTX_ctrl. */
int tokentls_ssl_ctx_set_min_proto_version(SSL_CTX *context, int version);
int tokentls_ssl_ctx_set_max_proto_version(SSL_CTX *context, int version);
int tokentls_ssl_ctx_get_max_proto_version(SSL_CTX *context);
int tokentls_ssl_ctx_get_min_proto_version(SSL_CTX *context);
int tokentls_ssl_ctx_set1_client_sigalgs_list(SSL_CTX *context, const char *list);
int tokentls_ssl_ctx_add1_chain_cert(SSL_CTX *context, X509 *certificate);
int tokentls_ssl_ctx_clear_chain_certs(SSL_CTX *context);
int tokentls_ssl_set_tlsext_host_name(SSL *ssl, const char *name);
int tokentls_ssl_get_peer_signature_type_nid(const SSL *ssl, int *nid);

/* SSL_* controls for one connection, macros over SSL_ctrl. */
int tokentls_ssl_add1_chain_cert(SSL *ssl, X509 *certificate);
int tokentls_ssl_set1_client_sigalgs_list(SSL *ssl, const char *list);

/* STACK_OF(X509_NAME) accessors. */
int tokentls_x509_name_stack_count(const STACK_OF(X509_NAME) *stack);
const X509_NAME *tokentls_x509_name_stack_value(const STACK_OF(X509_NAME) *stack, int index);

/* An ex_data index for SSL_CTX, allocated once per process (CRYPTO_get_ex_new_index). */
int tokentls_ssl_ctx_ex_index(void);

/* Whether every block that OpenSSL frees in this process is zeroed first. A
   constructor installs such allocation functions when the program loads, before
   OpenSSL allocates anything; OpenSSL 3.0's DER decoder, for one, frees a plain
   copy of each private key it decodes without clearing it. Returns 1 or 0. */
int tokentls_clearing_allocator_installed(void);

/* fork() is marked unavailable to Swift; the fork test program needs it. */
int tokentls_fork(void);

/* Values of composite or cast macros. */
int tokentls_evp_pkey_keypair_selection(void);
int tokentls_evp_pkey_public_key_selection(void);

/* curl_easy_setopt and curl_easy_getinfo are variadic. */
CURLcode tokentls_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode tokentls_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode tokentls_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode tokentls_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode tokentls_curl_setopt_write_function(CURL *handle, size_t (*function)(char *, size_t, size_t, void *));
CURLcode tokentls_curl_setopt_header_function(CURL *handle, size_t (*function)(char *, size_t, size_t, void *));
CURLcode tokentls_curl_setopt_ssl_ctx_function(CURL *handle, CURLcode (*function)(CURL *, void *, void *));
CURLcode tokentls_curl_setopt_debug_function(CURL *handle,
                                             int (*function)(CURL *, curl_infotype, char *, size_t, void *));
CURLcode tokentls_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode tokentls_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value);
CURLcode tokentls_curl_getinfo_pointer(CURL *handle, CURLINFO info, void **value);

#endif
