import COpenSSL
import CShims
import Foundation
import TokenStore
import TokenTLS

/// The connection policy of one client's requests.
enum ConnectionPolicy {
    /// A new connection and a full handshake for every request: libcurl keeps no
    /// TLS sessions and closes each connection after its request.
    case fullHandshake
    /// A new connection for every request, resuming the TLS session of an earlier one.
    case resumption
    /// One kept-alive connection for all requests.
    case keepAlive
}

/// The client certificate and where its private key is.
enum ClientCredential {
    /// PEM files that libcurl loads itself (`CURLOPT_SSLCERT`, `CURLOPT_SSLKEY`).
    case keyFile(certificate: String, key: String)
    /// A token identity, installed into each connection's `SSL_CTX` with
    /// `ClientIdentity.configure(sslContext:)` from `CURLOPT_SSL_CTX_FUNCTION`.
    case token(ClientIdentity)
    /// The same certificate with a key read once into memory, installed the same way.
    case memoryKey(MemoryIdentity)
}

/// A certificate, its CA certificates and a private key in memory, installed into an
/// `SSL_CTX` with the calls and signature algorithms that `ClientIdentity` uses, so
/// that a comparison with a token identity differs in the key alone.
final class MemoryIdentity: @unchecked Sendable {
    // Owned references. After creation they are only up-referenced into contexts.
    private let certificate: OpaquePointer
    private let key: OpaquePointer
    private let chain: [OpaquePointer]
    private let signatureAlgorithms: String

    init(certificateFile: String, key: OpaquePointer, chain: [Certificate], signatureAlgorithms: String) throws {
        certificate = try readCertificate(certificateFile)
        EVP_PKEY_up_ref(key)
        self.key = key
        self.chain = try chain.map { authority in
            try authority.withX509 { x509 in
                X509_up_ref(x509)
                return x509
            }
        }
        self.signatureAlgorithms = signatureAlgorithms
    }

    deinit {
        X509_free(certificate)
        EVP_PKEY_free(key)
        for authority in chain {
            X509_free(authority)
        }
    }

    func configure(sslContext: OpaquePointer) throws {
        guard SSL_CTX_use_certificate(sslContext, certificate) == 1, SSL_CTX_use_PrivateKey(sslContext, key) == 1,
            tokentls_ssl_ctx_clear_chain_certs(sslContext) == 1
        else {
            throw BenchFailure("installing the in-memory identity failed: \(OpenSSLErrorQueue.drain())")
        }
        for authority in chain where tokentls_ssl_ctx_add1_chain_cert(sslContext, authority) != 1 {
            throw BenchFailure("adding a CA certificate failed: \(OpenSSLErrorQueue.drain())")
        }
        guard tokentls_ssl_ctx_set1_client_sigalgs_list(sslContext, signatureAlgorithms) == 1 else {
            throw BenchFailure("setting the signature algorithms failed: \(OpenSSLErrorQueue.drain())")
        }
    }
}

/// The closure that `CURLOPT_SSL_CTX_FUNCTION` runs for each connection. libcurl passes
/// it back as the callback's data pointer.
private final class ContextInstaller {
    let install: (OpaquePointer) throws -> Void
    init(_ install: @escaping (OpaquePointer) throws -> Void) { self.install = install }
}

/// GET requests through one libcurl handle, with the same options for both kinds of
/// credential. Used by one thread at a time.
final class CurlClient: @unchecked Sendable {
    private let handle: UnsafeMutableRawPointer
    private let installer: Unmanaged<ContextInstaller>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let url: String
    /// The connections libcurl opened for this client's requests so far.
    private(set) var connectionsOpened = 0
    /// The requests this client has completed.
    private(set) var requests = 0

    init(url: String, caFile: String, credential: ClientCredential, policy: ConnectionPolicy) throws {
        guard let handle = curl_easy_init() else {
            throw BenchFailure("curl_easy_init failed")
        }
        self.handle = handle
        self.url = url
        errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

        var results = [
            tokentls_curl_setopt_string(handle, CURLOPT_URL, url),
            tokentls_curl_setopt_string(handle, CURLOPT_CAINFO, caFile),
            // No CA folder: the server's CA comes from caFile alone, for both credentials.
            tokentls_curl_setopt_pointer(handle, CURLOPT_CAPATH, nil),
            tokentls_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1),
            tokentls_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer),
            tokentls_curl_setopt_write_function(handle) { _, size, count, _ in size * count },
        ]
        let install: ((OpaquePointer) throws -> Void)?
        switch credential {
        case .keyFile(let certificate, let key):
            install = nil
            results.append(tokentls_curl_setopt_string(handle, CURLOPT_SSLCERT, certificate))
            results.append(tokentls_curl_setopt_string(handle, CURLOPT_SSLKEY, key))
        case .token(let identity):
            install = { try identity.configure(sslContext: $0) }
        case .memoryKey(let identity):
            install = { try identity.configure(sslContext: $0) }
        }
        installer = install.map { Unmanaged.passRetained(ContextInstaller($0)) }
        if let installer {
            results.append(tokentls_curl_setopt_ssl_ctx_function(handle, installIdentity))
            results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_SSL_CTX_DATA, installer.toOpaque()))
        }
        switch policy {
        case .fullHandshake:
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_FORBID_REUSE, 1))
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_SSL_SESSIONID_CACHE, 0))
        case .resumption:
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_FORBID_REUSE, 1))
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_SSL_SESSIONID_CACHE, 1))
        case .keepAlive:
            break
        }
        if let failed = results.first(where: { $0 != CURLE_OK }) {
            curl_easy_cleanup(handle)
            installer?.release()
            errorBuffer.deallocate()
            throw BenchFailure("setting a libcurl option failed: \(String(cString: curl_easy_strerror(failed)))")
        }
    }

    deinit {
        curl_easy_cleanup(handle)
        installer?.release()
        errorBuffer.deallocate()
    }

    /// Sends one GET and checks that the response status is 200.
    func get() throws {
        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else {
            throw BenchFailure(
                "GET \(url) failed: \(String(cString: curl_easy_strerror(code))): \(String(cString: errorBuffer))")
        }
        var status = 0
        var connections = 0
        _ = tokentls_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        _ = tokentls_curl_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connections)
        guard status == 200 else {
            throw BenchFailure("GET \(url) returned HTTP status \(status), expected 200")
        }
        connectionsOpened += connections
        requests += 1
    }
}

/// The `CURLOPT_SSL_CTX_FUNCTION` of clients with a token or in-memory identity. Its
/// data pointer is the retained `ContextInstaller`.
private let installIdentity:
    @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> CURLcode = {
        _, sslContext, data in
        guard let sslContext, let data else {
            return CURLE_SSL_CERTPROBLEM
        }
        let installer = Unmanaged<ContextInstaller>.fromOpaque(data).takeUnretainedValue()
        do {
            try installer.install(OpaquePointer(sslContext))
            return CURLE_OK
        } catch {
            progress("installing the client identity failed: \(error)")
            return CURLE_SSL_CERTPROBLEM
        }
    }
