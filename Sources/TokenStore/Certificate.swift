import COpenSSL
import CShims
import Foundation

/// An X.509 certificate, kept as DER, with the fields TokenTLS shows and matches on.
public struct Certificate: Sendable, Hashable {
    public enum KeyType: String, Sendable {
        case rsa = "RSA"
        case ec = "EC"
        case other = "other"
    }

    public let der: [UInt8]
    public let subject: String
    public let issuer: String
    /// DER of the subject and issuer names, for `CKA_SUBJECT` and `CKA_ISSUER`.
    public let subjectDER: [UInt8]
    public let issuerDER: [UInt8]
    /// DER of the serial number INTEGER, for `CKA_SERIAL_NUMBER`.
    public let serialNumberDER: [UInt8]
    /// The serial number in upper-case hexadecimal.
    public let serialNumber: String
    public let notBefore: Date
    public let notAfter: Date
    public let keyType: KeyType
    /// RSA modulus bits or EC field bits.
    public let keyBits: Int
    /// For EC keys the curve's short name, such as `prime256v1`.
    public let curveName: String?
    /// SHA-1 of the subjectPublicKey bit string: the `CKA_ID` that pairs this
    /// certificate with its key objects.
    public let keyIdentifier: [UInt8]
    public let isCA: Bool
    public let version: Int
    /// False when an extended key usage extension is present and allows neither
    /// client authentication nor any purpose; a certificate without one allows it.
    public let allowsClientAuthentication: Bool

    /// Decodes a DER certificate.
    public init(der: [UInt8]) throws {
        let parsed = der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var pointer: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_X509(nil, &pointer, buffer.count)
        }
        guard let x509 = parsed else {
            OpenSSLErrorQueue.clear()
            throw TokenStoreError(.invalidCertificate, "invalid certificate: the data is not a DER X.509 certificate")
        }
        defer { X509_free(x509) }
        try self.init(x509: x509)
    }

    /// Copies the fields of an OpenSSL certificate; `x509` stays owned by the caller.
    init(x509: OpaquePointer) throws {
        der = try Certificate.encode { i2d_X509(x509, $0) }
        subject = Certificate.nameString(X509_get_subject_name(x509))
        issuer = Certificate.nameString(X509_get_issuer_name(x509))
        subjectDER = try Certificate.encode { i2d_X509_NAME(X509_get_subject_name(x509), $0) }
        issuerDER = try Certificate.encode { i2d_X509_NAME(X509_get_issuer_name(x509), $0) }
        let serial = X509_get0_serialNumber(x509)
        serialNumberDER = try Certificate.encode { i2d_ASN1_INTEGER(serial, $0) }
        serialNumber = Certificate.integerHex(serial)
        notBefore = Certificate.date(X509_get0_notBefore(x509))
        notAfter = Certificate.date(X509_get0_notAfter(x509))
        version = Int(X509_get_version(x509)) + 1
        isCA = X509_check_ca(x509) != 0
        if X509_get_extension_flags(x509) & UInt32(EXFLAG_XKUSAGE) != 0 {
            allowsClientAuthentication = X509_get_extended_key_usage(x509) & UInt32(XKU_SSL_CLIENT | XKU_ANYEKU) != 0
        } else {
            allowsClientAuthentication = true
        }

        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_pubkey_digest(x509, EVP_sha1(), &digest, &length) == 1 else {
            throw TokenStoreError(.openSSL, "computing the key identifier failed: \(OpenSSLErrorQueue.drain())")
        }
        keyIdentifier = Array(digest.prefix(Int(length)))

        let publicKey = X509_get0_pubkey(x509)
        keyBits = publicKey.map { Int(EVP_PKEY_get_bits($0)) } ?? 0
        if let publicKey, EVP_PKEY_is_a(publicKey, "RSA") == 1 {
            keyType = .rsa
            curveName = nil
        } else if let publicKey, EVP_PKEY_is_a(publicKey, "EC") == 1 {
            keyType = .ec
            var name = [CChar](repeating: 0, count: 80)
            var nameLength = 0
            if EVP_PKEY_get_utf8_string_param(publicKey, "group", &name, name.count, &nameLength) == 1 {
                curveName = string(fromCString: name)
            } else {
                curveName = nil
            }
        } else {
            keyType = .other
            curveName = nil
        }
        OpenSSLErrorQueue.clear()
    }

    /// SHA-1 of the DER encoding in upper-case hex: the thumbprint Windows shows.
    public var sha1Thumbprint: String { hexString(Digest.sha1(der)) }
    public var sha256Thumbprint: String { hexString(Digest.sha256(der)) }

    /// "RSA 2048" or "EC P-256", for listings.
    public var keyDescription: String {
        switch keyType {
        case .rsa: "RSA \(keyBits)"
        case .ec: "EC " + (curveName.map(Certificate.curveDisplayName) ?? "\(keyBits)")
        case .other: "unsupported key type"
        }
    }

    static func curveDisplayName(_ name: String) -> String {
        switch name {
        case "prime256v1", "P-256": "P-256"
        case "secp384r1", "P-384": "P-384"
        case "secp521r1", "P-521": "P-521"
        default: name
        }
    }

    /// Returns whether `date` lies within the validity period.
    public func isValid(at date: Date = Date()) -> Bool {
        notBefore <= date && date <= notAfter
    }

    /// Calls `body` with a fresh OpenSSL copy of the certificate, freed afterwards.
    public func withX509<Result>(_ body: (OpaquePointer) throws -> Result) throws -> Result {
        let parsed = der.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var pointer: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_X509(nil, &pointer, buffer.count)
        }
        guard let x509 = parsed else {
            throw TokenStoreError(.invalidCertificate, "invalid certificate: the stored DER no longer decodes")
        }
        defer { X509_free(x509) }
        return try body(x509)
    }

    static func encode(_ encoder: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32) throws -> [UInt8] {
        let length = encoder(nil)
        guard length > 0 else {
            throw TokenStoreError(.openSSL, "DER encoding failed: \(OpenSSLErrorQueue.drain())")
        }
        var result = [UInt8](repeating: 0, count: Int(length))
        let written = result.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var pointer: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
            return encoder(&pointer)
        }
        guard written == length else {
            throw TokenStoreError(.openSSL, "DER encoding failed: \(OpenSSLErrorQueue.drain())")
        }
        return result
    }

    /// Formats the subject of an OpenSSL certificate like `subject`.
    public static func subjectString(_ x509: OpaquePointer) -> String {
        nameString(X509_get_subject_name(x509))
    }

    /// Formats the issuer of an OpenSSL certificate like `issuer`.
    public static func issuerString(_ x509: OpaquePointer) -> String {
        nameString(X509_get_issuer_name(x509))
    }

    /// Formats an OpenSSL X509_NAME like `subject`.
    public static func nameString(of name: OpaquePointer) -> String {
        nameString(name)
    }

    static func nameString(_ name: OpaquePointer?) -> String {
        guard let name, let text = tokentls_x509_name_string(name) else {
            return ""
        }
        defer { tokentls_openssl_free(text) }
        return String(cString: text)
    }

    private static func integerHex(_ integer: UnsafePointer<ASN1_INTEGER>?) -> String {
        guard let integer, let number = ASN1_INTEGER_to_BN(integer, nil) else {
            return ""
        }
        defer { BN_free(number) }
        guard let text = BN_bn2hex(number) else {
            return ""
        }
        defer { tokentls_openssl_free(text) }
        return String(cString: text)
    }

    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
        var broken = tm()
        guard let time, ASN1_TIME_to_tm(time, &broken) == 1 else {
            return Date(timeIntervalSince1970: 0)
        }
        return Date(timeIntervalSince1970: TimeInterval(timegm(&broken)))
    }
}

/// One-shot digests through OpenSSL.
public enum Digest {
    public static func sha1(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_sha1()) }
    public static func sha256(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_sha256()) }

    private static func digest(_ data: [UInt8], _ algorithm: OpaquePointer?) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = data.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &output, &length, algorithm, nil) }
        return Array(output.prefix(Int(length)))
    }
}
