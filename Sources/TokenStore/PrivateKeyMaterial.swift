import COpenSSL
import PKCS11

/// The components of a decoded private key, each in its own wiped buffer.
///
/// Only RSA (2048 bits or more) and EC keys on P-256, P-384 and P-521 are accepted,
/// the key types TLS client authentication and common tokens share.
public final class PrivateKeyMaterial: Sendable {
    public enum Components: Sendable {
        case rsa(RSAComponents)
        case ec(ECComponents)
    }

    public struct RSAComponents: Sendable {
        public let modulus: SecretBytes
        public let publicExponent: SecretBytes
        public let privateExponent: SecretBytes
        public let prime1: SecretBytes
        public let prime2: SecretBytes
        public let exponent1: SecretBytes
        public let exponent2: SecretBytes
        public let coefficient: SecretBytes
    }

    public struct ECComponents: Sendable {
        /// DER of the curve's OBJECT IDENTIFIER, for `CKA_EC_PARAMS`.
        public let parameters: [UInt8]
        /// The private scalar, left-padded to the curve's size.
        public let privateValue: SecretBytes
        /// The uncompressed public point (04 || x || y).
        public let publicPoint: [UInt8]
    }

    public let components: Components

    init(components: Components) {
        self.components = components
    }

    /// Overwrites every secret component with zeros.
    public func wipe() {
        switch components {
        case .rsa(let rsa):
            for part in [rsa.privateExponent, rsa.prime1, rsa.prime2, rsa.exponent1, rsa.exponent2, rsa.coefficient] {
                part.wipe()
            }
        case .ec(let ec):
            ec.privateValue.wipe()
        }
    }

    /// Named curves TokenTLS accepts: OpenSSL group name, display name and DER OID.
    static let curves: [(group: String, display: String, oid: [UInt8])] = [
        ("prime256v1", "P-256", [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]),
        ("secp384r1", "P-384", [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22]),
        ("secp521r1", "P-521", [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23]),
    ]

    static let minimumRSABits = 2048

    /// Copies the components out of an OpenSSL private key; `key` stays owned by the caller.
    /// `source` names the file in error messages.
    static func extract(from key: OpaquePointer, source: String) throws -> PrivateKeyMaterial {
        if EVP_PKEY_is_a(key, "RSA") == 1 {
            let bits = Int(EVP_PKEY_get_bits(key))
            guard bits >= minimumRSABits else {
                throw TokenStoreError(
                    .unsupportedKey,
                    "unsupported key in \(source): RSA \(bits) bits is too small; TokenTLS imports RSA keys of \(minimumRSABits) bits or more"
                )
            }
            let rsa = RSAComponents(
                modulus: try bigNumber(key, "n", source: source),
                publicExponent: try bigNumber(key, "e", source: source),
                privateExponent: try bigNumber(key, "d", source: source),
                prime1: try bigNumber(key, "rsa-factor1", source: source),
                prime2: try bigNumber(key, "rsa-factor2", source: source),
                exponent1: try bigNumber(key, "rsa-exponent1", source: source),
                exponent2: try bigNumber(key, "rsa-exponent2", source: source),
                coefficient: try bigNumber(key, "rsa-coefficient1", source: source))
            return PrivateKeyMaterial(components: .rsa(rsa))
        }
        if EVP_PKEY_is_a(key, "EC") == 1 {
            var name = [CChar](repeating: 0, count: 80)
            var nameLength = 0
            guard EVP_PKEY_get_utf8_string_param(key, "group", &name, name.count, &nameLength) == 1 else {
                throw TokenStoreError(
                    .unsupportedKey,
                    "unsupported key in \(source): the EC key has explicit curve parameters; TokenTLS imports keys on the named curves P-256, P-384 and P-521"
                )
            }
            let group = string(fromCString: name)
            guard let curve = curves.first(where: { $0.group == group }) else {
                throw TokenStoreError(
                    .unsupportedKey,
                    "unsupported key in \(source): EC curve \(group); TokenTLS imports EC keys on P-256, P-384 and P-521")
            }
            let fieldBytes = (Int(EVP_PKEY_get_bits(key)) + 7) / 8
            let privateValue = try bigNumber(key, "priv", source: source, padTo: fieldBytes)
            var point = [UInt8](repeating: 0, count: 1 + 2 * fieldBytes)
            var pointLength = 0
            guard EVP_PKEY_get_octet_string_param(key, "encoded-pub-key", &point, point.count, &pointLength) == 1 else {
                throw TokenStoreError(.openSSL, "reading the EC public key from \(source) failed: \(OpenSSLErrorQueue.drain())")
            }
            let ec = ECComponents(
                parameters: curve.oid, privateValue: privateValue, publicPoint: Array(point.prefix(pointLength)))
            return PrivateKeyMaterial(components: .ec(ec))
        }
        let typeName = EVP_PKEY_get0_type_name(key).map { String(cString: $0) } ?? "unknown"
        throw TokenStoreError(
            .unsupportedKey,
            "unsupported key type \(typeName) in \(source): TokenTLS imports RSA keys (2048 bits or more) and EC keys on P-256, P-384 and P-521"
        )
    }

    /// Reads one BIGNUM parameter into wiped storage and clears OpenSSL's copy.
    private static func bigNumber(_ key: OpaquePointer, _ name: String, source: String, padTo width: Int = 0) throws
        -> SecretBytes
    {
        var number: OpaquePointer?
        guard EVP_PKEY_get_bn_param(key, name, &number) == 1, let number else {
            throw TokenStoreError(
                .unsupportedKey, "the private key in \(source) lacks its \(name) component: TokenTLS needs complete keys")
        }
        defer { BN_clear_free(number) }
        let length = max(width, Int((BN_num_bits(number) + 7) / 8))
        return try SecretBytes(count: length) { buffer in
            let pointer = buffer.bindMemory(to: UInt8.self).baseAddress
            guard BN_bn2binpad(number, pointer, Int32(length)) == Int32(length) else {
                throw TokenStoreError(.openSSL, "copying the \(name) key component failed")
            }
        }
    }
}
