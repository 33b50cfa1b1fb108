import COpenSSL
import CP11Kit
import CShims
import Foundation
import PKCS11
import TokenStore

/// Reads a PEM private key file.
func readPrivateKey(_ path: String) throws -> OpaquePointer {
    guard let file = BIO_new_file(path, "r") else {
        throw BenchFailure("cannot open \(path): \(OpenSSLErrorQueue.drain())")
    }
    defer { BIO_free(file) }
    guard let key = PEM_read_bio_PrivateKey(file, nil, nil, nil) else {
        throw BenchFailure("cannot read the private key in \(path): \(OpenSSLErrorQueue.drain())")
    }
    return key
}

/// Reads a PEM certificate file.
func readCertificate(_ path: String) throws -> OpaquePointer {
    guard let file = BIO_new_file(path, "r") else {
        throw BenchFailure("cannot open \(path): \(OpenSSLErrorQueue.drain())")
    }
    defer { BIO_free(file) }
    guard let certificate = PEM_read_bio_X509(file, nil, nil, nil) else {
        throw BenchFailure("cannot read the certificate in \(path): \(OpenSSLErrorQueue.drain())")
    }
    return certificate
}

/// The signature schemes the benchmark signs with, all over SHA-256.
enum SignatureScheme: CaseIterable {
    case rsaPSS
    case rsaPKCS1
    case ecdsa

    var title: String {
        switch self {
        case .rsaPSS: "RSA-2048 PSS"
        case .rsaPKCS1: "RSA-2048 PKCS#1 v1.5"
        case .ecdsa: "ECDSA P-256"
        }
    }

    var isRSA: Bool { self != .ecdsa }

    /// The PKCS#11 mechanism that makes this signature over a SHA-256 digest.
    var mechanism: Mechanism {
        switch self {
        case .rsaPSS: .rsaPKCSPSS(hash: UInt(CKM_SHA256), mgf: UInt(CKG_MGF1_SHA256), saltLength: 32)
        case .rsaPKCS1: .rsaPKCS
        case .ecdsa: .ecdsa
        }
    }

    /// Returns what `C_Sign` takes for `digest` under `mechanism`: the bare digest, or
    /// for PKCS#1 v1.5 the DER DigestInfo that wraps it.
    func tokenInput(digest: [UInt8]) -> [UInt8] {
        guard self == .rsaPKCS1 else {
            return digest
        }
        // DigestInfo ::= SEQUENCE { AlgorithmIdentifier { id-sha256, NULL }, OCTET STRING (32 bytes) }
        let sha256DigestInfoPrefix: [UInt8] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
        ]
        return sha256DigestInfoPrefix + digest
    }
}

/// The message every signer signs: the size of a TLS 1.3 CertificateVerify input
/// (64 spaces, the context string, a zero byte and a SHA-256 transcript hash).
let signedMessage: [UInt8] =
    Array(repeating: 0x20, count: 64) + Array("TLS 1.3, client CertificateVerify".utf8) + [0]
    + Array(repeating: 0xa5, count: 32)

/// Signs `signedMessage` with `EVP_DigestSignInit_ex` and `EVP_DigestSign` on a new
/// digest context per signature, the calls libssl makes for a CertificateVerify.
/// One signer is used by one thread at a time.
final class EVPSigner: @unchecked Sendable {
    private let key: OpaquePointer
    let scheme: SignatureScheme
    private var buffer: [UInt8]
    /// The length of the last signature, at the start of `buffer`.
    private var lastLength = 0

    /// Takes a reference to `key` of its own.
    init(key: OpaquePointer, scheme: SignatureScheme) {
        EVP_PKEY_up_ref(key)
        self.key = key
        self.scheme = scheme
        buffer = [UInt8](repeating: 0, count: Int(EVP_PKEY_get_size(key)))
    }

    deinit {
        EVP_PKEY_free(key)
    }

    func sign() throws {
        guard let context = EVP_MD_CTX_new() else {
            throw BenchFailure("EVP_MD_CTX_new failed")
        }
        defer { EVP_MD_CTX_free(context) }
        var keyContext: OpaquePointer?
        guard EVP_DigestSignInit_ex(context, &keyContext, "SHA256", nil, nil, key, nil) == 1 else {
            throw BenchFailure("EVP_DigestSignInit_ex for \(scheme.title) failed: \(OpenSSLErrorQueue.drain())")
        }
        if scheme.isRSA {
            let padding = scheme == .rsaPSS ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING
            guard EVP_PKEY_CTX_set_rsa_padding(keyContext, padding) == 1 else {
                throw BenchFailure("setting the RSA padding failed: \(OpenSSLErrorQueue.drain())")
            }
            if scheme == .rsaPSS, EVP_PKEY_CTX_set_rsa_pss_saltlen(keyContext, RSA_PSS_SALTLEN_DIGEST) != 1 {
                throw BenchFailure("setting the PSS salt length failed: \(OpenSSLErrorQueue.drain())")
            }
        }
        // Like libssl, ask for the length first, then sign.
        var length = 0
        let signed = signedMessage.withUnsafeBufferPointer { message in
            guard EVP_DigestSign(context, nil, &length, message.baseAddress, message.count) == 1, length <= buffer.count
            else {
                return false
            }
            return EVP_DigestSign(context, &buffer, &length, message.baseAddress, message.count) == 1
        }
        guard signed else {
            throw BenchFailure("EVP_DigestSign with \(scheme.title) failed: \(OpenSSLErrorQueue.drain())")
        }
        lastLength = length
    }

    /// Checks the last signature against `publicKey` with OpenSSL's default provider.
    func verifyLastSignature(publicKey: OpaquePointer) -> Bool {
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        var keyContext: OpaquePointer?
        guard EVP_DigestVerifyInit_ex(context, &keyContext, "SHA256", nil, nil, publicKey, nil) == 1 else {
            return false
        }
        if scheme.isRSA {
            _ = EVP_PKEY_CTX_set_rsa_padding(keyContext, scheme == .rsaPSS ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING)
            if scheme == .rsaPSS {
                _ = EVP_PKEY_CTX_set_rsa_pss_saltlen(keyContext, RSA_PSS_SALTLEN_DIGEST)
            }
        }
        return signedMessage.withUnsafeBufferPointer { message in
            EVP_DigestVerify(context, buffer, lastLength, message.baseAddress, message.count) == 1
        }
    }
}

/// Signs the SHA-256 digest of `signedMessage` with `Session.sign`: one
/// `C_SignInit` and `C_Sign` on a session of its own, with no pool and no provider.
final class RawTokenSigner: @unchecked Sendable {
    private let session: Session
    private let key: ObjectHandle
    private let mechanism: Mechanism
    private let input: [UInt8]

    init(session: Session, key: ObjectHandle, scheme: SignatureScheme) {
        self.session = session
        self.key = key
        mechanism = scheme.mechanism
        input = scheme.tokenInput(digest: Digest.sha256(signedMessage))
    }

    func sign() throws {
        _ = try session.sign(mechanism, key: key, data: input)
    }
}

// MARK: - Identities made in process

/// Issues P-256 client certificates under a CA of `scripts/make-certs` and packs
/// each with its key and the CA certificate into a PFX, as an enrolment would.
final class IdentityFactory {
    private let authorityKey: OpaquePointer
    private let authorityCertificate: OpaquePointer
    let password = "bench-pfx-password"

    init(authorityKey: String, authorityCertificate: String) throws {
        self.authorityKey = try readPrivateKey(authorityKey)
        self.authorityCertificate = try readCertificate(authorityCertificate)
    }

    deinit {
        EVP_PKEY_free(authorityKey)
        X509_free(authorityCertificate)
    }

    /// Makes a PFX (DER) with a new P-256 key and a certificate for it, named after `index`.
    /// Certificate `i` expires `30 + i` days from now, so every one is distinct and
    /// the highest index expires last.
    func makePFX(index: Int) throws -> [UInt8] {
        let key = try generateP256Key()
        defer { EVP_PKEY_free(key) }
        let certificate = try issueCertificate(for: key, index: index)
        defer { X509_free(certificate) }

        guard let authorities = tokentls_x509_stack_new() else {
            throw BenchFailure("allocating a certificate stack failed")
        }
        defer { tokentls_x509_stack_free_all(authorities) }
        X509_up_ref(authorityCertificate)
        guard tokentls_x509_stack_push(authorities, authorityCertificate) == 1 else {
            throw BenchFailure("adding the CA certificate to the PFX failed")
        }
        guard
            let pkcs12 = PKCS12_create(
                password, "Bench Client \(index)", key, certificate, authorities, 0, 0, 0, 0, 0)
        else {
            throw BenchFailure("PKCS12_create failed: \(OpenSSLErrorQueue.drain())")
        }
        defer { PKCS12_free(pkcs12) }
        let length = i2d_PKCS12(pkcs12, nil)
        guard length > 0 else {
            throw BenchFailure("encoding the PFX failed: \(OpenSSLErrorQueue.drain())")
        }
        var der = [UInt8](repeating: 0, count: Int(length))
        der.withUnsafeMutableBufferPointer { buffer in
            var pointer: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
            _ = i2d_PKCS12(pkcs12, &pointer)
        }
        return der
    }

    private func generateP256Key() throws -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
            throw BenchFailure("EVP_PKEY_CTX_new_from_name(EC) failed: \(OpenSSLErrorQueue.drain())")
        }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "P-256") == 1,
            EVP_PKEY_generate(context, &key) == 1, let key
        else {
            throw BenchFailure("generating a P-256 key failed: \(OpenSSLErrorQueue.drain())")
        }
        return key
    }

    private func issueCertificate(for key: OpaquePointer, index: Int) throws -> OpaquePointer {
        guard let certificate = X509_new() else {
            throw BenchFailure("X509_new failed")
        }
        var serial = [UInt8](repeating: 0, count: 8)
        _ = RAND_bytes(&serial, Int32(serial.count))
        let serialValue = serial.reduce(UInt64(0)) { ($0 << 8) | UInt64($1) } >> 1
        let name = X509_NAME_new()
        defer { X509_NAME_free(name) }
        let commonName = "TokenTLS Bench Client \(index)"
        let extensions = [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, "clientAuth"),
        ]
        var ok =
            X509_set_version(certificate, 2) == 1
            && ASN1_INTEGER_set_uint64(X509_get_serialNumber(certificate), serialValue) == 1
            && X509_gmtime_adj(X509_getm_notBefore(certificate), -86_400) != nil
            && X509_gmtime_adj(X509_getm_notAfter(certificate), (30 + index) * 86_400) != nil
            && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, "TokenTLS Bench", -1, -1, 0) == 1
            && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, commonName, -1, -1, 0) == 1
            && X509_set_subject_name(certificate, name) == 1
            && X509_set_issuer_name(certificate, X509_get_subject_name(authorityCertificate)) == 1
            && X509_set_pubkey(certificate, key) == 1
        for (nid, value) in extensions where ok {
            guard let ext = X509V3_EXT_conf_nid(nil, nil, nid, value) else {
                ok = false
                break
            }
            ok = X509_add_ext(certificate, ext, -1) == 1
            X509_EXTENSION_free(ext)
        }
        guard ok, X509_sign(certificate, authorityKey, EVP_sha256()) > 0 else {
            X509_free(certificate)
            throw BenchFailure("issuing certificate \(index) failed: \(OpenSSLErrorQueue.drain())")
        }
        return certificate
    }
}
