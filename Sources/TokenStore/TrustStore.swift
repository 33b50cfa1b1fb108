import COpenSSL
import CP11Kit
import CShims
import Foundation
import PKCS11

/// The root store: CA certificates that the token marks with `CKA_TRUSTED` true.
///
/// PKCS#11 lets only the security officer set `CKA_TRUSTED` to true, so adding a
/// trust anchor needs the SO PIN and a process that has only the user PIN cannot
/// plant one. Reading the store needs no login, because certificates are public
/// objects. Removal also needs the SO PIN here, although PKCS#11 itself lets a user
/// session destroy public objects.
public struct TrustStore: Sendable {
    public let token: Token

    public init(token: Token) {
        self.token = token
    }

    /// A trust anchor and the object that contains it.
    public struct Anchor: Sendable {
        public let certificate: Certificate
        public let object: ObjectHandle
        public var thumbprint: String { certificate.sha1Thumbprint }
    }

    /// The outcome of adding one certificate.
    public enum AddResult: Sendable {
        case added(Certificate)
        case alreadyPresent(Certificate)
    }

    /// Returns every certificate in the token with `CKA_TRUSTED` true.
    public func anchors() throws -> [Anchor] {
        try TokenLock.with(token, .shared) {
            try TrustStore.anchors(try token.openSession())
        }
    }

    static func anchors(_ session: Session) throws -> [Anchor] {
        let template: [Attribute] = [
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)),
            .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
            .bool(UInt(CKA_TRUSTED), true),
        ]
        var result: [Anchor] = []
        for object in try session.findObjects(template) {
            let values = try session.attributes(object, [UInt(CKA_VALUE), UInt(CKA_TRUSTED)])
            guard boolValue(values[UInt(CKA_TRUSTED)]) == true, let der = values[UInt(CKA_VALUE)],
                let certificate = try? Certificate(der: der)
            else {
                continue
            }
            result.append(Anchor(certificate: certificate, object: object))
        }
        return result.sorted { $0.certificate.subject < $1.certificate.subject }
    }

    /// Adds CA certificates as trust anchors, logged in as the security officer.
    ///
    /// Every certificate is checked before anything is written: a certificate that is
    /// not a CA (basicConstraints CA:TRUE, or a self-signed X.509 v1 root) is an error
    /// and nothing is added. Certificates already in the store are reported, not duplicated.
    public func add(_ certificates: [Certificate], securityOfficerPIN: SecretBytes, source: String) throws -> [AddResult] {
        for certificate in certificates where !certificate.isCA {
            throw TokenStoreError(
                .invalidCertificate,
                "\(certificate.subject) (\(certificate.sha1Thumbprint)) in \(source) is not a CA certificate: the root store holds only CA certificates"
            )
        }
        return try TokenLock.with(token, .exclusive) {
            try write(certificates, securityOfficerPIN: securityOfficerPIN, source: source)
        }
    }

    private func write(_ certificates: [Certificate], securityOfficerPIN: SecretBytes, source: String) throws -> [AddResult] {
        let session = try token.openSession()
        try loginSecurityOfficer(session, pin: securityOfficerPIN)
        defer { try? session.logout() }
        var present = Set(try TrustStore.anchors(session).map(\.certificate.der))
        var results: [AddResult] = []
        var created: [ObjectHandle] = []
        do {
            for certificate in certificates {
                if present.contains(certificate.der) {
                    results.append(.alreadyPresent(certificate))
                    continue
                }
                created.append(try session.createObject(TrustStore.template(certificate)))
                present.insert(certificate.der)
                results.append(.added(certificate))
            }
        } catch let error as PKCS11Error {
            for object in created.reversed() {
                try? session.destroyObject(object)
            }
            throw TokenStoreError(
                .token, "adding trust anchors from \(source) to \(token) failed, nothing was kept: \(error)", underlying: error)
        }
        return results
    }

    /// Removes the trust anchor with the SHA-1 `thumbprint`, logged in as the security officer.
    public func remove(thumbprint: String, securityOfficerPIN: SecretBytes) throws -> Certificate {
        guard let wanted = bytes(fromHex: thumbprint), wanted.count == 20 else {
            throw TokenStoreError(
                .identityNotFound,
                "invalid thumbprint \"\(thumbprint)\": expected 40 hexadecimal digits (SHA-1), as 'tokentls trust list' prints them"
            )
        }
        return try TokenLock.with(token, .exclusive) {
            try destroyAnchor(hexString(wanted), securityOfficerPIN: securityOfficerPIN)
        }
    }

    private func destroyAnchor(_ thumbprint: String, securityOfficerPIN: SecretBytes) throws -> Certificate {
        let session = try token.openSession()
        try loginSecurityOfficer(session, pin: securityOfficerPIN)
        defer { try? session.logout() }
        guard let anchor = try TrustStore.anchors(session).first(where: { $0.thumbprint == thumbprint }) else {
            throw TokenStoreError(
                .identityNotFound,
                "no trust anchor with thumbprint \(thumbprint) in \(token): run 'tokentls trust list' to see them")
        }
        do {
            try session.destroyObject(anchor.object)
        } catch let error as PKCS11Error {
            throw TokenStoreError(.token, "removing the trust anchor \(anchor.thumbprint) failed: \(error)", underlying: error)
        }
        return anchor.certificate
    }

    private func loginSecurityOfficer(_ session: Session, pin: SecretBytes) throws {
        do {
            try session.loginSecurityOfficer(pin: pin)
        } catch let error as PKCS11Error {
            if error.returnValue == UInt(CKR_PIN_INCORRECT) {
                throw TokenStoreError(
                    .token, "wrong security officer PIN for \(token): check TOKENTLS_SO_PIN, --so-pin-file or what you typed",
                    underlying: error)
            }
            throw TokenStoreError(.token, "logging in to \(token) as security officer failed: \(error)", underlying: error)
        }
    }

    private static func template(_ certificate: Certificate) -> [Attribute] {
        [
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)),
            .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
            .bool(UInt(CKA_TOKEN), true),
            .bool(UInt(CKA_PRIVATE), false),
            .bool(UInt(CKA_TRUSTED), true),
            .ulong(UInt(CKA_CERTIFICATE_CATEGORY), 2),
            .bytes(UInt(CKA_ID), certificate.keyIdentifier),
            .string(UInt(CKA_LABEL), "Trusted: " + (TokenStore.commonName(certificate) ?? certificate.sha1Thumbprint)),
            .bytes(UInt(CKA_SUBJECT), certificate.subjectDER),
            .bytes(UInt(CKA_ISSUER), certificate.issuerDER),
            .bytes(UInt(CKA_SERIAL_NUMBER), certificate.serialNumberDER),
            .bytes(UInt(CKA_VALUE), certificate.der),
        ]
    }
}

extension TokenStore {
    /// Reads the certificates in `token` that are not trust anchors, without logging in.
    public static func publicCertificates(on token: Token) throws -> [Certificate] {
        try TokenLock.with(token, .shared) {
            try readPublicCertificates(try token.openSession())
        }
    }

    private static func readPublicCertificates(_ session: Session) throws -> [Certificate] {
        let template: [Attribute] = [
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)),
            .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
        ]
        var result: [Certificate] = []
        for object in try session.findObjects(template) {
            let values = try session.attributes(object, [UInt(CKA_VALUE), UInt(CKA_TRUSTED)])
            guard boolValue(values[UInt(CKA_TRUSTED)]) != true, let der = values[UInt(CKA_VALUE)],
                let certificate = try? Certificate(der: der)
            else {
                continue
            }
            result.append(certificate)
        }
        return result
    }
}

extension Certificate {
    /// Reads every certificate from PEM or DER data. `source` names the file in errors.
    public static func readAll(_ data: [UInt8], source: String) throws -> [Certificate] {
        OpenSSLErrorQueue.clear()
        defer { OpenSSLErrorQueue.clear() }
        var certificates: [Certificate] = []
        if let bio = data.withUnsafeBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) {
            defer { BIO_free(bio) }
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                defer { X509_free(x509) }
                certificates.append(try Certificate(x509: x509))
            }
        }
        if certificates.isEmpty, let certificate = try? Certificate(der: data) {
            certificates.append(certificate)
        }
        guard !certificates.isEmpty else {
            throw TokenStoreError(
                .invalidCertificate, "\(source) contains no certificate: expected PEM or DER X.509 certificates")
        }
        return certificates
    }
}
