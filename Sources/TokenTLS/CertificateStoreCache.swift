import COpenSSL
import Synchronization
import TokenStore

/// The trust anchors of a client's requests, built into an OpenSSL `X509_STORE` once
/// and shared by every connection with the same trust settings.
///
/// Building the store means parsing the system CA bundle (about 140 certificates on
/// Debian 12); doing that per connection made it the largest cost of a handshake.
/// An `X509_STORE` is reference counted and safe for concurrent verification.
final class CertificateStoreCache: Sendable {
    private final class Entry: @unchecked Sendable {
        // Owned reference; only up-referenced into contexts after creation.
        let store: OpaquePointer

        init(_ store: OpaquePointer) { self.store = store }

        deinit { X509_STORE_free(store) }
    }

    private let entries = Mutex<[String: Entry]>([:])

    /// Installs the store for `request`'s trust settings into `sslContext`.
    func install(into sslContext: OpaquePointer, for request: HTTPRequest) throws {
        let key =
            "\(request.useSystemRoots)|\(request.caFile ?? "")|"
            + request.trustAnchors.map(\.sha1Thumbprint).joined(separator: ",")
        let entry = try entries.withLock { entries -> Entry in
            if let entry = entries[key] {
                return entry
            }
            let entry = Entry(try CertificateStoreCache.build(request))
            entries[key] = entry
            return entry
        }
        SSL_CTX_set1_cert_store(sslContext, entry.store)
    }

    private static func build(_ request: HTTPRequest) throws -> OpaquePointer {
        OpenSSLErrorQueue.clear()
        guard let store = X509_STORE_new() else {
            throw TLSError(.configuration, "allocating a certificate store failed")
        }
        do {
            if request.useSystemRoots, X509_STORE_set_default_paths(store) != 1 {
                throw TLSError(.configuration, "loading the system CA bundle failed: \(OpenSSLErrorQueue.drain())")
            }
            for anchor in request.trustAnchors {
                try anchor.withX509 { _ = X509_STORE_add_cert(store, $0) }
            }
            if let caFile = request.caFile, X509_STORE_load_file(store, caFile) != 1 {
                throw TLSError(
                    .configuration, "cannot load CA certificates from --cacert \(caFile): \(OpenSSLErrorQueue.drain())")
            }
        } catch {
            X509_STORE_free(store)
            throw error
        }
        OpenSSLErrorQueue.clear()
        return store
    }
}
