import COpenSSL
import CP11Kit
import CShims
import CTokenProvider
import PKCS11
import TokenStore

/// A TLS client identity whose private key stays in a token: the certificate, the CA
/// certificates to send with it, and an OpenSSL key that signs through the token.
///
/// Use `configure(sslContext:)` to install it into an `SSL_CTX`, or pass it to
/// `HTTPClient`. One identity may serve many connections on many threads at once.
public final class ClientIdentity: @unchecked Sendable {
    // The OpenSSL objects are immutable after creation and only ever up-referenced.
    let key: OpaquePointer
    private let certificate: OpaquePointer
    private let chain: [OpaquePointer]
    private let signingKey: SigningKey
    public let identity: Identity
    /// The signature algorithms offered for client authentication, in OpenSSL's list syntax.
    public let signatureAlgorithms: String
    /// False when the token cannot make RSA-PSS signatures with this key: TLS 1.3 needs them.
    public let supportsTLS13: Bool

    /// Prepares `identity` from `store` for TLS.
    ///
    /// Throws when the identity has no private key, or when the token offers no
    /// mechanism TLS can use with it.
    public init(store: TokenStore, identity: Identity) throws {
        guard ProviderLoader.loaded else {
            throw TLSError(.configuration, "loading the TokenTLS OpenSSL provider failed: \(OpenSSLErrorQueue.drain())")
        }
        guard let keyObject = identity.privateKeyObject else {
            throw TLSError(
                .configuration,
                "\(identity.thumbprint) (\(identity.certificate.subject)) has no private key in \(store.token): import its PFX")
        }
        self.identity = identity
        let tokenMechanisms = try store.token.mechanisms()
        let usable =
            identity.allowedMechanisms.isEmpty ? tokenMechanisms : tokenMechanisms.intersection(identity.allowedMechanisms)

        let kind: SigningKey.KeyKind
        switch identity.certificate.keyType {
        case .rsa:
            kind = .rsa
            var algorithms: [String] = []
            if usable.contains(UInt(CKM_RSA_PKCS_PSS)) {
                algorithms += ["RSA-PSS+SHA256", "RSA-PSS+SHA384", "RSA-PSS+SHA512"]
            }
            if usable.contains(UInt(CKM_RSA_PKCS)) {
                algorithms += ["RSA+SHA256", "RSA+SHA384", "RSA+SHA512"]
            }
            guard !algorithms.isEmpty else {
                throw TLSError(
                    .configuration,
                    "\(store.token) cannot sign with the RSA key of \(identity.thumbprint): it allows neither CKM_RSA_PKCS_PSS nor CKM_RSA_PKCS"
                )
            }
            signatureAlgorithms = algorithms.joined(separator: ":")
            supportsTLS13 = usable.contains(UInt(CKM_RSA_PKCS_PSS))
        case .ec:
            kind = .ec
            guard usable.contains(UInt(CKM_ECDSA)) else {
                throw TLSError(
                    .configuration, "\(store.token) cannot sign with the EC key of \(identity.thumbprint): it lacks CKM_ECDSA")
            }
            signatureAlgorithms = "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512"
            supportsTLS13 = true
        case .other:
            throw TLSError(
                .configuration, "\(identity.thumbprint) has a key type TokenTLS cannot sign with: use RSA or EC P-256/P-384/P-521"
            )
        }

        signingKey = SigningKey(
            pool: store.pool, object: keyObject, id: identity.id, kind: kind, name: "\(identity.thumbprint) in \(store.token)")
        certificate = try ClientIdentity.parse(identity.certificate)
        let reference = SigningKeyRegistry.register(signingKey)
        OpenSSLErrorQueue.clear()
        guard let publicKey = X509_get0_pubkey(certificate), let tokenKey = tokentls_provider_new_key(publicKey, reference) else {
            SigningKeyRegistry.release(reference)
            X509_free(certificate)
            throw TLSError(
                .configuration, "building the token-backed key for \(identity.thumbprint) failed: \(OpenSSLErrorQueue.drain())")
        }
        key = tokenKey
        chain = try store.authorityChain(for: identity.certificate).map(ClientIdentity.parse)
    }

    deinit {
        EVP_PKEY_free(key)
        X509_free(certificate)
        chain.forEach { X509_free($0) }
    }

    /// The number of signatures the token has made for this identity.
    public var signatureCount: Int { signingKey.signatureCount }

    /// The signatures made so far, by PKCS#11 mechanism name such as `CKM_RSA_PKCS_PSS`.
    public var signaturesByMechanism: [String: Int] { signingKey.signaturesByMechanism }

    /// The reason of the last failed token signature, if any.
    public var lastSigningError: String? { signingKey.lastError }

    func clearSigningError() { signingKey.clearLastError() }

    /// Runs `body` with the token-backed `EVP_PKEY *`, for signing outside a TLS handshake.
    ///
    /// The pointer is valid only during `body`; call `EVP_PKEY_up_ref` to keep it longer.
    /// Its private half cannot be exported.
    public func withPrivateKey<Result>(_ body: (OpaquePointer) throws -> Result) rethrows -> Result {
        try body(key)
    }

    /// Installs the certificate, its CA certificates, the token key and the signature
    /// algorithms the token can perform into `sslContext` (an `SSL_CTX *`).
    ///
    /// For an RSA key whose token lacks RSA-PSS, this also caps the context at TLS 1.2,
    /// because TLS 1.3 requires PSS for RSA.
    public func configure(sslContext: OpaquePointer) throws {
        OpenSSLErrorQueue.clear()
        guard SSL_CTX_use_certificate(sslContext, certificate) == 1 else {
            throw TLSError(
                .configuration, "installing the certificate \(identity.thumbprint) failed: \(OpenSSLErrorQueue.drain())")
        }
        guard SSL_CTX_use_PrivateKey(sslContext, key) == 1 else {
            throw TLSError(
                .configuration, "installing the token key of \(identity.thumbprint) failed: \(OpenSSLErrorQueue.drain())")
        }
        _ = tokentls_ssl_ctx_clear_chain_certs(sslContext)
        for authority in chain where tokentls_ssl_ctx_add1_chain_cert(sslContext, authority) != 1 {
            throw TLSError(
                .configuration, "adding a CA certificate for \(identity.thumbprint) failed: \(OpenSSLErrorQueue.drain())")
        }
        guard tokentls_ssl_ctx_set1_client_sigalgs_list(sslContext, signatureAlgorithms) == 1 else {
            throw TLSError(
                .configuration, "setting the signature algorithms \(signatureAlgorithms) failed: \(OpenSSLErrorQueue.drain())")
        }
        if !supportsTLS13 {
            let current = tokentls_ssl_ctx_get_max_proto_version(sslContext)
            if current == 0 || current > TLS1_2_VERSION {
                _ = tokentls_ssl_ctx_set_max_proto_version(sslContext, TLS1_2_VERSION)
            }
        }
    }

    /// Installs the identity into one connection (an `SSL *`), as `configure(sslContext:)`
    /// does for a context. Used from the certificate callback of automatic selection,
    /// when the TLS version is already fixed.
    func configure(ssl: OpaquePointer) throws {
        OpenSSLErrorQueue.clear()
        guard SSL_use_certificate(ssl, certificate) == 1, SSL_use_PrivateKey(ssl, key) == 1 else {
            throw TLSError(
                .configuration, "installing \(identity.thumbprint) into the connection failed: \(OpenSSLErrorQueue.drain())")
        }
        for authority in chain where tokentls_ssl_add1_chain_cert(ssl, authority) != 1 {
            throw TLSError(
                .configuration, "adding a CA certificate for \(identity.thumbprint) failed: \(OpenSSLErrorQueue.drain())")
        }
        guard tokentls_ssl_set1_client_sigalgs_list(ssl, signatureAlgorithms) == 1 else {
            throw TLSError(
                .configuration, "setting the signature algorithms \(signatureAlgorithms) failed: \(OpenSSLErrorQueue.drain())")
        }
    }

    private static func parse(_ certificate: Certificate) throws -> OpaquePointer {
        let parsed = certificate.der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var pointer: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_X509(nil, &pointer, buffer.count)
        }
        guard let parsed else {
            throw TLSError(.configuration, "the certificate \(certificate.sha1Thumbprint) in the token does not decode")
        }
        return parsed
    }
}
