import CP11Kit
import CTokenProvider
import Foundation
import PKCS11
import Synchronization
import TokenStore

/// A private key object in a token that the OpenSSL provider signs with.
///
/// Contract of the signing path: libssl hashes the handshake transcript in process,
/// and the provider passes the finished digest to `sign`. `sign` runs on the thread
/// that performs the handshake. It borrows a session from the pool, waiting while all
/// sessions are in use, and makes one `C_SignInit`/`C_Sign` call. When the token is
/// gone or refuses, the handshake fails and `lastError` says why. Digests and
/// signatures are never logged.
final class SigningKey: Sendable {
    enum KeyKind: Sendable {
        case rsa
        case ec
    }

    let pool: SessionPool
    /// The key's handle, looked up again by `CKA_ID` when the token no longer accepts it.
    private let object: Mutex<ObjectHandle>
    let id: [UInt8]
    let kind: KeyKind
    let name: String
    private let signatures = Atomic<Int>(0)
    private let mechanismCounts = Mutex<[String: Int]>([:])
    private let failure = Mutex<String?>(nil)

    init(pool: SessionPool, object: ObjectHandle, id: [UInt8], kind: KeyKind, name: String) {
        self.pool = pool
        self.object = Mutex(object)
        self.id = id
        self.kind = kind
        self.name = name
    }

    /// The number of signatures the token has made with this key through TokenTLS.
    var signatureCount: Int { signatures.load(ordering: .relaxed) }

    /// Signatures made so far, by mechanism name such as `CKM_RSA_PKCS_PSS`.
    var signaturesByMechanism: [String: Int] { mechanismCounts.withLock { $0 } }

    /// The most recent signing failure, for error messages after a failed handshake.
    var lastError: String? { failure.withLock { $0 } }

    func clearLastError() {
        failure.withLock { $0 = nil }
    }

    /// Signs a digest made with the OpenSSL digest `digestNID` under `scheme`.
    func sign(scheme: tokentls_scheme, digestNID: Int32, digest: [UInt8]) throws -> [UInt8] {
        guard let hash = HashAlgorithm(nid: digestNID), hash.length == digest.count else {
            throw SigningError("the handshake asked for a digest (OpenSSL NID \(digestNID)) that TokenTLS does not sign with")
        }
        let mechanism: Mechanism
        let input: [UInt8]
        switch scheme {
        case TOKENTLS_SCHEME_RSA_PKCS1:
            mechanism = .rsaPKCS
            input = hash.digestInfoPrefix + digest
        case TOKENTLS_SCHEME_RSA_PSS:
            mechanism = .rsaPKCSPSS(hash: hash.mechanism, mgf: hash.mgf1, saltLength: UInt(hash.length))
            input = digest
        case TOKENTLS_SCHEME_ECDSA:
            mechanism = .ecdsa
            input = digest
        default:
            throw SigningError("the handshake asked for an unknown signature scheme \(scheme.rawValue)")
        }
        do {
            // The shared token lock keeps the signature out of another process's writes,
            // which SoftHSM's file store does not isolate.
            let signature = try TokenLock.with(pool.token, .shared) {
                try signWithSession(mechanism, input: input)
            }
            signatures.add(1, ordering: .relaxed)
            mechanismCounts.withLock { $0[mechanism.name, default: 0] += 1 }
            return signature
        } catch let error as PKCS11Error {
            throw SigningError("token signing with \(mechanism.name) for \(name) failed: \(error)")
        }
    }

    private func signWithSession(_ mechanism: Mechanism, input: [UInt8]) throws -> [UInt8] {
        try pool.withSession { session in
            do {
                return try session.sign(mechanism, key: object.withLock { $0 }, data: input)
            } catch let error as PKCS11Error
                where error.returnValue == UInt(CKR_KEY_HANDLE_INVALID) || error.returnValue == UInt(CKR_OBJECT_HANDLE_INVALID)
            {
                // The module renumbered its objects: another process changed the token,
                // or this is a child after fork() where the parent's handles are void.
                let found = try session.findObjects([
                    .ulong(UInt(CKA_CLASS), UInt(CKO_PRIVATE_KEY)), .bytes(UInt(CKA_ID), id),
                ])
                guard found.count == 1 else { throw error }
                object.withLock { $0 = found[0] }
                return try session.sign(mechanism, key: found[0], data: input)
            }
        }
    }

    func record(_ error: Error) {
        failure.withLock { $0 = "\(error)" }
    }
}

struct SigningError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The hashes TLS signs with, and what PKCS#11 and PKCS#1 call them.
struct HashAlgorithm {
    let length: Int
    let mechanism: UInt
    let mgf1: UInt
    /// The DER DigestInfo prefix of RFC 8017, section 9.2, note 1.
    let digestInfoPrefix: [UInt8]

    init?(nid: Int32) {
        switch nid {
        case NID_sha256:
            length = 32
            mechanism = UInt(CKM_SHA256)
            mgf1 = UInt(CKG_MGF1_SHA256)
            digestInfoPrefix = [
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
            ]
        case NID_sha384:
            length = 48
            mechanism = UInt(CKM_SHA384)
            mgf1 = UInt(CKG_MGF1_SHA384)
            digestInfoPrefix = [
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30,
            ]
        case NID_sha512:
            length = 64
            mechanism = UInt(CKM_SHA512)
            mgf1 = UInt(CKG_MGF1_SHA512)
            digestInfoPrefix = [
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40,
            ]
        default:
            return nil
        }
    }
}

/// The keys the provider may call back for, by the reference it holds.
///
/// A C callback cannot capture Swift state, so the provider carries an integer
/// reference and the callbacks look the key up here.
enum SigningKeyRegistry {
    private static let keys = Mutex<[UInt64: SigningKey]>([:])
    private static let nextReference = Atomic<UInt64>(1)

    static func register(_ key: SigningKey) -> UInt64 {
        let reference = nextReference.add(1, ordering: .relaxed).oldValue
        keys.withLock { $0[reference] = key }
        return reference
    }

    static func key(_ reference: UInt64) -> SigningKey? {
        keys.withLock { $0[reference] }
    }

    static func release(_ reference: UInt64) {
        _ = keys.withLock { $0.removeValue(forKey: reference) }
    }
}

/// The sign callback the provider calls; see `tokentls_sign_callback`.
func providerSign(
    reference: UInt64, scheme: Int32, digestNID: Int32, digest: UnsafePointer<UInt8>?, digestLength: Int,
    signature: UnsafeMutablePointer<UInt8>?, signatureLength: UnsafeMutablePointer<Int>?
) -> Int32 {
    guard let key = SigningKeyRegistry.key(reference), let digest, let signature, let signatureLength else {
        return 0
    }
    do {
        let result = try key.sign(
            scheme: tokentls_scheme(rawValue: UInt32(scheme)), digestNID: digestNID,
            digest: Array(UnsafeBufferPointer(start: digest, count: digestLength)))
        guard result.count <= signatureLength.pointee else {
            throw SigningError(
                "the token returned a \(result.count)-byte signature, more than the \(signatureLength.pointee) bytes expected")
        }
        result.withUnsafeBufferPointer { signature.update(from: $0.baseAddress!, count: result.count) }
        signatureLength.pointee = result.count
        return 1
    } catch {
        key.record(error)
        return 0
    }
}

func providerRelease(reference: UInt64) {
    SigningKeyRegistry.release(reference)
}

/// Loads the provider once per process.
enum ProviderLoader {
    static let loaded: Bool = {
        tokentls_provider_load(
            { reference, scheme, nid, digest, digestLength, signature, signatureLength in
                providerSign(
                    reference: reference, scheme: scheme, digestNID: nid, digest: digest, digestLength: digestLength,
                    signature: signature,
                    signatureLength: signatureLength)
            },
            { reference in providerRelease(reference: reference) }) == 1
    }()
}
