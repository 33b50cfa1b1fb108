import COpenSSL
import CP11Kit
import Foundation
import PKCS11

/// The identities in one token: import, listing, lookup, removal and export.
///
/// Every operation runs on a session from the store's pool, logged in with the
/// PIN given at creation. A store may be used from several threads.
public final class TokenStore: Sendable {
    public let token: Token
    public let pool: SessionPool

    /// Opens the store on `token`, logging in with `pin`.
    public init(token: Token, pin: SecretBytes?) throws {
        self.token = token
        do {
            // Logging in reads the token, so it waits while another process writes.
            pool = try TokenLock.with(token, .shared) { try SessionPool(token: token, pin: pin) }
        } catch let error as PKCS11Error {
            throw TokenStore.loginError(error, token: token)
        }
    }

    static func loginError(_ error: PKCS11Error, token: Token) -> Error {
        switch error.returnValue {
        case UInt(CKR_PIN_INCORRECT):
            return TokenStoreError(
                .token,
                "wrong PIN for \(token): check TOKENTLS_PIN, --pin-file or what you typed; repeated failures can lock the token",
                underlying: error)
        case UInt(CKR_PIN_LOCKED):
            return TokenStoreError(
                .token, "the user PIN of \(token) is locked: the security officer must reset it", underlying: error)
        case UInt(CKR_PIN_LEN_RANGE):
            return TokenStoreError(
                .token, "the PIN for \(token) has a length the token does not accept (\(error.returnValueName))",
                underlying: error)
        default:
            return TokenStoreError(.token, "logging in to \(token) failed: \(error)", underlying: error)
        }
    }

    // MARK: - Listing and lookup

    /// Lists all certificates in the token, each with its key objects when present.
    public func identities() throws -> [Identity] {
        try TokenLock.with(token, .shared) {
            try pool.withSession { session in
                try readIdentities(session)
            }
        }
    }

    /// A key object that no certificate in the token shares a `CKA_ID` with.
    public struct LeftoverKey: Sendable {
        public let object: ObjectHandle
        public let id: [UInt8]
        public let label: String
        /// "private key" or "public key".
        public let kind: String
    }

    /// Key objects whose `CKA_ID` no certificate shares: the leftovers of an import
    /// that was interrupted before its certificate was written, or keys made by other
    /// tools that have no certificate yet.
    public func leftoverKeys() throws -> [LeftoverKey] {
        try TokenLock.with(token, .shared) {
            try readLeftoverKeys()
        }
    }

    private func readLeftoverKeys() throws -> [LeftoverKey] {
        try pool.withSession { session in
            let certificateIDs = Set(try readIdentities(session).map(\.id))
            var leftovers: [LeftoverKey] = []
            for (objectClass, kind) in [(UInt(CKO_PRIVATE_KEY), "private key"), (UInt(CKO_PUBLIC_KEY), "public key")] {
                for key in try session.findObjects([.ulong(UInt(CKA_CLASS), objectClass)]) {
                    let values = try session.attributes(key, [UInt(CKA_ID), UInt(CKA_LABEL)])
                    let id = values[UInt(CKA_ID)] ?? []
                    if !certificateIDs.contains(id) {
                        let label = String(decoding: values[UInt(CKA_LABEL)] ?? [], as: UTF8.self)
                        leftovers.append(LeftoverKey(object: key, id: id, label: label, kind: kind))
                    }
                }
            }
            return leftovers
        }
    }

    /// Destroys the leftover key objects among `leftovers` that are still leftovers
    /// now, and returns how many it destroyed.
    @discardableResult
    public func removeLeftovers(_ leftovers: [LeftoverKey]) throws -> Int {
        try TokenLock.with(token, .exclusive) {
            // Check again under the lock: an import may have completed meanwhile.
            let current = Set(try readLeftoverKeys().map(\.object))
            let stale = leftovers.filter { current.contains($0.object) }
            try destroy(stale)
            return stale.count
        }
    }

    private func destroy(_ leftovers: [LeftoverKey]) throws {
        try pool.withSession { session in
            for leftover in leftovers {
                do {
                    try session.destroyObject(leftover.object)
                } catch let error as PKCS11Error {
                    throw TokenStoreError(
                        .token, "removing the \(leftover.kind) \"\(leftover.label)\" failed: \(error)", underlying: error)
                }
            }
        }
    }

    /// Finds the identity whose certificate has the SHA-1 `thumbprint` (hex, any case,
    /// blanks and colons allowed).
    public func identity(thumbprint: String) throws -> Identity {
        guard let wanted = bytes(fromHex: thumbprint), wanted.count == 20 else {
            throw TokenStoreError(
                .identityNotFound,
                "invalid thumbprint \"\(thumbprint)\": expected 40 hexadecimal digits (SHA-1), as 'tokentls list' prints them")
        }
        let text = hexString(wanted)
        guard let match = try identities().first(where: { $0.thumbprint == text }) else {
            throw TokenStoreError(
                .identityNotFound,
                "no certificate with thumbprint \(text) in \(token): run 'tokentls list' to see the thumbprints")
        }
        return match
    }

    /// Finds the identity that a PKCS#11 URI names by object label, id or both.
    public func identity(uri: PKCS11URI) throws -> Identity {
        guard uri.object != nil || uri.id != nil else {
            throw TokenStoreError(
                .identityNotFound, "the URI \(uri) names no object: add object=LABEL or id=%XX... as 'tokentls list --json' shows"
            )
        }
        let matches = try identities().filter { identity in
            (uri.object == nil || uri.object == identity.label) && (uri.id == nil || uri.id! == identity.id)
                && identity.hasPrivateKey
        }
        if matches.count == 1 {
            return matches[0]
        }
        if matches.isEmpty {
            throw TokenStoreError(
                .identityNotFound,
                "no certificate with a private key matches \(uri) in \(token): run 'tokentls list --json' to see the URIs")
        }
        throw TokenStoreError(
            .ambiguousIdentity, "\(matches.count) identities match \(uri) in \(token): add id= to the URI or use --thumbprint")
    }

    /// Reads every identity, starting over when an object disappears during the read.
    ///
    /// Another process that writes to the same token (SoftHSM's file store is shared)
    /// can make a handle from `C_FindObjects` invalid before its attributes are read.
    func readIdentities(_ session: Session) throws -> [Identity] {
        var attempt = 1
        while true {
            do {
                return try readIdentitiesOnce(session)
            } catch let error as PKCS11Error where PKCS11Error.isTransientRead(error) && attempt < 5 {
                attempt += 1
            }
        }
    }

    private func readIdentitiesOnce(_ session: Session) throws -> [Identity] {
        var keys: [[UInt8]: (handle: ObjectHandle, exportable: Bool?, allowed: Set<UInt>)] = [:]
        for key in try session.findObjects([.ulong(UInt(CKA_CLASS), UInt(CKO_PRIVATE_KEY))]) {
            let values = try session.attributes(key, [UInt(CKA_ID), UInt(CKA_EXTRACTABLE), UInt(CKA_ALLOWED_MECHANISMS)])
            let allowed = TokenStore.mechanismList(values[UInt(CKA_ALLOWED_MECHANISMS)])
            keys[values[UInt(CKA_ID)] ?? []] = (key, boolValue(values[UInt(CKA_EXTRACTABLE)]), allowed)
        }
        var publicKeys: [[UInt8]: ObjectHandle] = [:]
        for key in try session.findObjects([.ulong(UInt(CKA_CLASS), UInt(CKO_PUBLIC_KEY))]) {
            let values = try session.attributes(key, [UInt(CKA_ID)])
            publicKeys[values[UInt(CKA_ID)] ?? []] = key
        }

        var identities: [Identity] = []
        let template: [Attribute] = [
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)),
            .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
        ]
        for object in try session.findObjects(template) {
            let values = try session.attributes(object, [UInt(CKA_VALUE), UInt(CKA_ID), UInt(CKA_LABEL), UInt(CKA_TRUSTED)])
            // Trust anchors belong to the root store (TrustStore), not to the identities.
            guard let der = values[UInt(CKA_VALUE)], boolValue(values[UInt(CKA_TRUSTED)]) != true,
                let certificate = try? Certificate(der: der)
            else {
                continue
            }
            let id = values[UInt(CKA_ID)] ?? []
            let key = keys[id]
            identities.append(
                Identity(
                    certificate: certificate, id: id, label: String(decoding: values[UInt(CKA_LABEL)] ?? [], as: UTF8.self),
                    certificateObject: object, privateKeyObject: key?.handle, publicKeyObject: publicKeys[id],
                    isExportable: key?.exportable, allowedMechanisms: key?.allowed ?? [], token: token))
        }
        return identities.sorted {
            ($0.hasPrivateKey ? 0 : 1, $0.certificate.subject) < ($1.hasPrivateKey ? 0 : 1, $1.certificate.subject)
        }
    }

    private static func mechanismList(_ bytes: [UInt8]?) -> Set<UInt> {
        guard let bytes else {
            return []
        }
        let size = MemoryLayout<CK_MECHANISM_TYPE>.size
        var result = Set<UInt>()
        var offset = 0
        while offset + size <= bytes.count {
            let value = bytes[offset..<offset + size].withUnsafeBytes { $0.loadUnaligned(as: CK_MECHANISM_TYPE.self) }
            result.insert(UInt(value))
            offset += size
        }
        return result
    }

    // MARK: - Removal

    /// Destroys the identity's certificate, private key and public key objects.
    /// CA certificates stay, because other identities may share them.
    public func remove(_ identity: Identity) throws {
        try TokenLock.with(token, .exclusive) {
            try removeObjects(of: identity)
        }
    }

    private func removeObjects(of identity: Identity) throws {
        try pool.withSession { session in
            for object in [identity.certificateObject, identity.privateKeyObject, identity.publicKeyObject].compactMap({ $0 }) {
                do {
                    try session.destroyObject(object)
                } catch let error as PKCS11Error {
                    throw TokenStoreError(
                        .token, "removing \(identity.thumbprint) from \(token) failed: \(error)", underlying: error)
                }
            }
        }
    }
}
