import CP11Kit

/// A PKCS#11 mechanism with its parameters.
public enum Mechanism: Sendable, Equatable {
    /// `CKM_RSA_PKCS`: PKCS#1 v1.5 signature over a DigestInfo made by the caller.
    case rsaPKCS
    /// `CKM_RSA_PKCS_PSS` over a digest: `hash` is a `CKM_SHA*` value, `mgf` a `CKG_MGF1_*` value,
    /// `saltLength` in bytes.
    case rsaPKCSPSS(hash: UInt, mgf: UInt, saltLength: UInt)
    /// `CKM_ECDSA` over a digest; the token returns r||s.
    case ecdsa
    case rsaKeyPairGeneration
    case ecKeyPairGeneration
    case aesKeyGeneration
    /// `CKM_AES_KEY_WRAP_PAD` (RFC 5649).
    case aesKeyWrapPad
    /// Any mechanism without parameters.
    case other(UInt)

    public var type: UInt {
        switch self {
        case .rsaPKCS: UInt(CKM_RSA_PKCS)
        case .rsaPKCSPSS: UInt(CKM_RSA_PKCS_PSS)
        case .ecdsa: UInt(CKM_ECDSA)
        case .rsaKeyPairGeneration: UInt(CKM_RSA_PKCS_KEY_PAIR_GEN)
        case .ecKeyPairGeneration: UInt(CKM_EC_KEY_PAIR_GEN)
        case .aesKeyGeneration: UInt(CKM_AES_KEY_GEN)
        case .aesKeyWrapPad: UInt(CKM_AES_KEY_WRAP_PAD)
        case .other(let type): type
        }
    }

    /// The mechanism's name as the PKCS#11 specification spells it, for messages and traces.
    public var name: String {
        switch self {
        case .rsaPKCS: "CKM_RSA_PKCS"
        case .rsaPKCSPSS: "CKM_RSA_PKCS_PSS"
        case .ecdsa: "CKM_ECDSA"
        case .rsaKeyPairGeneration: "CKM_RSA_PKCS_KEY_PAIR_GEN"
        case .ecKeyPairGeneration: "CKM_EC_KEY_PAIR_GEN"
        case .aesKeyGeneration: "CKM_AES_KEY_GEN"
        case .aesKeyWrapPad: "CKM_AES_KEY_WRAP_PAD"
        case .other(let type): "mechanism 0x" + String(type, radix: 16)
        }
    }

    @discardableResult
    func withUnsafeMechanism<Result>(_ body: (UnsafeMutablePointer<CK_MECHANISM>) throws -> Result) rethrows -> Result {
        switch self {
        case .rsaPKCSPSS(let hash, let mgf, let saltLength):
            var parameters = CK_RSA_PKCS_PSS_PARAMS(
                hashAlg: CK_MECHANISM_TYPE(hash), mgf: CK_RSA_PKCS_MGF_TYPE(mgf), sLen: CK_ULONG(saltLength))
            return try withUnsafeMutablePointer(to: &parameters) { pointer in
                var mechanism = CK_MECHANISM(
                    mechanism: CK_MECHANISM_TYPE(type), pParameter: UnsafeMutableRawPointer(pointer),
                    ulParameterLen: CK_ULONG(MemoryLayout<CK_RSA_PKCS_PSS_PARAMS>.size))
                return try body(&mechanism)
            }
        default:
            var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(type), pParameter: nil, ulParameterLen: 0)
            return try body(&mechanism)
        }
    }
}
