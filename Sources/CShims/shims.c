#include "shims.h"

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

void tokentls_openssl_free(void *pointer) { OPENSSL_free(pointer); }

long tokentls_bio_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }

int tokentls_x509_stack_count(const STACK_OF(X509) *stack) { return stack == NULL ? 0 : sk_X509_num(stack); }

X509 *tokentls_x509_stack_value(const STACK_OF(X509) *stack, int index) { return sk_X509_value(stack, index); }

STACK_OF(X509) *tokentls_x509_stack_new(void) { return sk_X509_new_null(); }

int tokentls_x509_stack_push(STACK_OF(X509) *stack, X509 *certificate) {
    return sk_X509_push(stack, certificate) > 0;
}

void tokentls_x509_stack_free_all(STACK_OF(X509) *stack) { sk_X509_pop_free(stack, X509_free); }

char *tokentls_x509_name_string(const X509_NAME *name) {
    const unsigned long flags = (ASN1_STRFLGS_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) | XN_FLAG_SEP_CPLUS_SPC
                                | XN_FLAG_DN_REV | XN_FLAG_FN_SN;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return NULL;
    char *result = NULL;
    if (X509_NAME_print_ex(bio, name, 0, flags) >= 0) {
        char *data = NULL;
        long length = BIO_get_mem_data(bio, &data);
        result = OPENSSL_malloc((size_t)length + 1);
        if (result != NULL) {
            memcpy(result, data, (size_t)length);
            result[length] = '\0';
        }
    }
    BIO_free(bio);
    return result;
}

int tokentls_ssl_ctx_set_min_proto_version(SSL_CTX *context, int version) {
    return (int)SSL_CTX_set_min_proto_version(context, version);
}

int tokentls_ssl_ctx_set_max_proto_version(SSL_CTX *context, int version) {
    return (int)SSL_CTX_set_max_proto_version(context, version);
}

int tokentls_ssl_ctx_get_max_proto_version(SSL_CTX *context) { return (int)SSL_CTX_get_max_proto_version(context); }

int tokentls_ssl_ctx_get_min_proto_version(SSL_CTX *context) { return (int)SSL_CTX_get_min_proto_version(context); }

int tokentls_ssl_ctx_set1_client_sigalgs_list(SSL_CTX *context, const char *list) {
    return (int)SSL_CTX_set1_client_sigalgs_list(context, list);
}

int tokentls_ssl_ctx_add1_chain_cert(SSL_CTX *context, X509 *certificate) {
    return (int)SSL_CTX_add1_chain_cert(context, certificate);
}

int tokentls_ssl_ctx_clear_chain_certs(SSL_CTX *context) { return (int)SSL_CTX_clear_chain_certs(context); }

int tokentls_ssl_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

int tokentls_ssl_get_peer_signature_type_nid(const SSL *ssl, int *nid) {
    return SSL_get_peer_signature_type_nid(ssl, nid);
}

int tokentls_ssl_add1_chain_cert(SSL *ssl, X509 *certificate) { return (int)SSL_add1_chain_cert(ssl, certificate); }

int tokentls_ssl_set1_client_sigalgs_list(SSL *ssl, const char *list) {
    return (int)SSL_set1_client_sigalgs_list(ssl, list);
}

int tokentls_x509_name_stack_count(const STACK_OF(X509_NAME) *stack) {
    return stack == NULL ? 0 : sk_X509_NAME_num(stack);
}

const X509_NAME *tokentls_x509_name_stack_value(const STACK_OF(X509_NAME) *stack, int index) {
    return sk_X509_NAME_value(stack, index);
}

static int ssl_ctx_ex_index = -1;
static CRYPTO_ONCE ssl_ctx_ex_index_once = CRYPTO_ONCE_STATIC_INIT;

static void allocate_ssl_ctx_ex_index(void) {
    ssl_ctx_ex_index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL, NULL, NULL, NULL);
}

int tokentls_ssl_ctx_ex_index(void) {
    if (!CRYPTO_THREAD_run_once(&ssl_ctx_ex_index_once, allocate_ssl_ctx_ex_index))
        return -1;
    return ssl_ctx_ex_index;
}

int tokentls_evp_pkey_keypair_selection(void) { return EVP_PKEY_KEYPAIR; }

int tokentls_evp_pkey_public_key_selection(void) { return EVP_PKEY_PUBLIC_KEY; }

CURLcode tokentls_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode tokentls_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode tokentls_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode tokentls_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode tokentls_curl_setopt_write_function(CURL *handle, size_t (*function)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, function);
}

CURLcode tokentls_curl_setopt_header_function(CURL *handle, size_t (*function)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, function);
}

CURLcode tokentls_curl_setopt_ssl_ctx_function(CURL *handle, CURLcode (*function)(CURL *, void *, void *)) {
    return curl_easy_setopt(handle, CURLOPT_SSL_CTX_FUNCTION, function);
}

CURLcode tokentls_curl_setopt_debug_function(CURL *handle,
                                             int (*function)(CURL *, curl_infotype, char *, size_t, void *)) {
    return curl_easy_setopt(handle, CURLOPT_DEBUGFUNCTION, function);
}

CURLcode tokentls_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode tokentls_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode tokentls_curl_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

int tokentls_fork(void) { return (int)fork(); }

static int clearing_allocator_installed = 0;

static void *clearing_malloc(size_t size, const char *file, int line) {
    (void)file;
    (void)line;
    return malloc(size);
}

static void clearing_free(void *pointer, const char *file, int line) {
    (void)file;
    (void)line;
    if (pointer != NULL)
        OPENSSL_cleanse(pointer, malloc_usable_size(pointer));
    free(pointer);
}

/* Moves the block instead of growing it in place, so no stale copy is left behind. */
static void *clearing_realloc(void *pointer, size_t size, const char *file, int line) {
    if (pointer == NULL)
        return clearing_malloc(size, file, line);
    if (size == 0) {
        clearing_free(pointer, file, line);
        return NULL;
    }
    void *moved = malloc(size);
    if (moved == NULL)
        return NULL;
    size_t old_size = malloc_usable_size(pointer);
    memcpy(moved, pointer, old_size < size ? old_size : size);
    clearing_free(pointer, file, line);
    return moved;
}

__attribute__((constructor)) static void install_clearing_allocator(void) {
    clearing_allocator_installed = CRYPTO_set_mem_functions(clearing_malloc, clearing_realloc, clearing_free);
}

int tokentls_clearing_allocator_installed(void) { return clearing_allocator_installed; }
