import CP11Kit
import Foundation
import PKCS11

extension TokenStore {
    /// Writes a decoded PFX into the token as one identity.
    ///
    /// The private key gets `CKA_SENSITIVE` true, `CKA_PRIVATE` true and may only sign.
    /// Without `exportable` it also gets `CKA_EXTRACTABLE` false, which the token
    /// never lets anyone change back. With `exportable` it can later leave the token
    /// wrapped under a key, never as readable attributes.
    ///
    /// Objects that already exist are not written twice. When any step fails the
    /// objects this call created are destroyed before the error is thrown. The key
    /// components in `contents` are wiped before this returns, whatever the outcome.
    public func importIdentity(_ contents: PFXContents, exportable: Bool, label: String? = nil) throws -> ImportResult {
        defer { contents.privateKey.wipe() }
        let certificate = contents.certificate
        let id = certificate.keyIdentifier
        let objectLabel = label ?? contents.friendlyName ?? TokenStore.commonName(certificate) ?? certificate.sha1Thumbprint

        return try TokenLock.with(token, .exclusive) {
            try writeIdentity(contents, id: id, label: objectLabel, exportable: exportable)
        }
    }

    private func writeIdentity(_ contents: PFXContents, id: [UInt8], label objectLabel: String, exportable: Bool) throws
        -> ImportResult
    {
        let certificate = contents.certificate
        return try pool.withSession { session in
            let existing = try readIdentities(session).first { $0.certificate.der == certificate.der }
            let hasPrivateKey = try !session.findObjects([
                .ulong(UInt(CKA_CLASS), UInt(CKO_PRIVATE_KEY)), .bytes(UInt(CKA_ID), id),
            ]).isEmpty
            let hasPublicKey = try !session.findObjects([
                .ulong(UInt(CKA_CLASS), UInt(CKO_PUBLIC_KEY)), .bytes(UInt(CKA_ID), id),
            ]).isEmpty
            if let existing, hasPrivateKey {
                return .alreadyPresent(existing)
            }

            var created: [ObjectHandle] = []
            do {
                if !hasPrivateKey {
                    created.append(
                        try session.createObject(privateKeyTemplate(contents, id: id, label: objectLabel, exportable: exportable))
                    )
                    try ImportStepHook.reached("private key")
                }
                if !hasPublicKey {
                    created.append(try session.createObject(publicKeyTemplate(contents, id: id, label: objectLabel)))
                    try ImportStepHook.reached("public key")
                }
                if existing == nil {
                    created.append(
                        try session.createObject(certificateTemplate(certificate, id: id, label: objectLabel, authority: false)))
                    try ImportStepHook.reached("certificate")
                }
                for authority in contents.chain {
                    let present = try !session.findObjects([
                        .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)), .bytes(UInt(CKA_VALUE), authority.der),
                    ]).isEmpty
                    if !present {
                        let authorityLabel = TokenStore.commonName(authority) ?? authority.sha1Thumbprint
                        created.append(
                            try session.createObject(
                                certificateTemplate(
                                    authority, id: authority.keyIdentifier, label: authorityLabel, authority: true)))
                        try ImportStepHook.reached("CA certificate")
                    }
                }
            } catch {
                for object in created.reversed() {
                    try? session.destroyObject(object)
                }
                let underlying = error as? PKCS11Error
                throw TokenStoreError(
                    .token,
                    "writing \(certificate.sha1Thumbprint) to \(token) failed, nothing was kept: \(error)\(TokenStore.storageHint(underlying))",
                    underlying: underlying)
            }
            guard let identity = try readIdentities(session).first(where: { $0.certificate.der == certificate.der }) else {
                for object in created.reversed() {
                    try? session.destroyObject(object)
                }
                throw TokenStoreError(
                    .inconsistentToken,
                    "\(token) accepted \(certificate.sha1Thumbprint) but did not keep it, and nothing was kept: its storage may be full or read-only"
                )
            }
            return .imported(identity, createdObjects: created.count)
        }
    }

    private func privateKeyTemplate(_ contents: PFXContents, id: [UInt8], label: String, exportable: Bool) -> [Attribute] {
        var template: [Attribute] = [
            .ulong(UInt(CKA_CLASS), UInt(CKO_PRIVATE_KEY)),
            .bool(UInt(CKA_TOKEN), true),
            .bool(UInt(CKA_PRIVATE), true),
            .bool(UInt(CKA_SENSITIVE), true),
            .bool(UInt(CKA_EXTRACTABLE), exportable),
            .bool(UInt(CKA_SIGN), true),
            .bool(UInt(CKA_DECRYPT), false),
            .bool(UInt(CKA_UNWRAP), false),
            .bool(UInt(CKA_DERIVE), false),
            .bool(UInt(CKA_SIGN_RECOVER), false),
            .bytes(UInt(CKA_ID), id),
            .string(UInt(CKA_LABEL), label),
            .bytes(UInt(CKA_SUBJECT), contents.certificate.subjectDER),
        ]
        switch contents.privateKey.components {
        case .rsa(let rsa):
            template += [
                .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_RSA)),
                .bytes(UInt(CKA_ALLOWED_MECHANISMS), TokenStore.mechanismBytes([UInt(CKM_RSA_PKCS), UInt(CKM_RSA_PKCS_PSS)])),
                .secret(UInt(CKA_MODULUS), rsa.modulus),
                .secret(UInt(CKA_PUBLIC_EXPONENT), rsa.publicExponent),
                .secret(UInt(CKA_PRIVATE_EXPONENT), rsa.privateExponent),
                .secret(UInt(CKA_PRIME_1), rsa.prime1),
                .secret(UInt(CKA_PRIME_2), rsa.prime2),
                .secret(UInt(CKA_EXPONENT_1), rsa.exponent1),
                .secret(UInt(CKA_EXPONENT_2), rsa.exponent2),
                .secret(UInt(CKA_COEFFICIENT), rsa.coefficient),
            ]
        case .ec(let ec):
            template += [
                .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_EC)),
                .bytes(UInt(CKA_ALLOWED_MECHANISMS), TokenStore.mechanismBytes([UInt(CKM_ECDSA)])),
                .bytes(UInt(CKA_EC_PARAMS), ec.parameters),
                .secret(UInt(CKA_VALUE), ec.privateValue),
            ]
        }
        return template
    }

    private func publicKeyTemplate(_ contents: PFXContents, id: [UInt8], label: String) -> [Attribute] {
        var template: [Attribute] = [
            .ulong(UInt(CKA_CLASS), UInt(CKO_PUBLIC_KEY)),
            .bool(UInt(CKA_TOKEN), true),
            .bool(UInt(CKA_PRIVATE), false),
            .bool(UInt(CKA_VERIFY), true),
            .bool(UInt(CKA_ENCRYPT), false),
            .bool(UInt(CKA_WRAP), false),
            .bytes(UInt(CKA_ID), id),
            .string(UInt(CKA_LABEL), label),
            .bytes(UInt(CKA_SUBJECT), contents.certificate.subjectDER),
        ]
        switch contents.privateKey.components {
        case .rsa(let rsa):
            template += [
                .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_RSA)),
                .secret(UInt(CKA_MODULUS), rsa.modulus),
                .secret(UInt(CKA_PUBLIC_EXPONENT), rsa.publicExponent),
            ]
        case .ec(let ec):
            template += [
                .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_EC)),
                .bytes(UInt(CKA_EC_PARAMS), ec.parameters),
                .bytes(UInt(CKA_EC_POINT), DER.octetString(ec.publicPoint)),
            ]
        }
        return template
    }

    func certificateTemplate(_ certificate: Certificate, id: [UInt8], label: String, authority: Bool) -> [Attribute] {
        [
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)),
            .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
            .bool(UInt(CKA_TOKEN), true),
            .bool(UInt(CKA_PRIVATE), false),
            .bool(UInt(CKA_MODIFIABLE), true),
            // PKCS#11 certificate categories: 1 is the token user's own, 2 an authority.
            .ulong(UInt(CKA_CERTIFICATE_CATEGORY), authority ? 2 : 1),
            .bytes(UInt(CKA_ID), id),
            .string(UInt(CKA_LABEL), label),
            .bytes(UInt(CKA_SUBJECT), certificate.subjectDER),
            .bytes(UInt(CKA_ISSUER), certificate.issuerDER),
            .bytes(UInt(CKA_SERIAL_NUMBER), certificate.serialNumberDER),
            .bytes(UInt(CKA_VALUE), certificate.der),
        ]
    }

    /// A hint for write failures that usually mean the token's storage is full or
    /// read-only (SoftHSM returns `CKR_GENERAL_ERROR` for both).
    static func storageHint(_ error: PKCS11Error?) -> String {
        guard let error, error.function == "C_CreateObject" else { return "" }
        let storage: Set<UInt> = [UInt(CKR_GENERAL_ERROR), UInt(CKR_DEVICE_MEMORY), UInt(CKR_DEVICE_ERROR)]
        return storage.contains(error.returnValue) ? "; the token's storage may be full or read-only" : ""
    }

    static func mechanismBytes(_ mechanisms: [UInt]) -> [UInt8] {
        var bytes: [UInt8] = []
        for mechanism in mechanisms {
            withUnsafeBytes(of: CK_MECHANISM_TYPE(mechanism)) { bytes += $0 }
        }
        return bytes
    }

    /// The certificate's first common name, for object labels.
    static func commonName(_ certificate: Certificate) -> String? {
        for part in certificate.subject.components(separatedBy: ", ") where part.hasPrefix("CN=") {
            return String(part.dropFirst(3))
        }
        return nil
    }
}

/// Test hooks between two token writes of an import. Unset, they do nothing.
///
/// `TOKENTLS_TEST_IMPORT_PAUSE` names a folder: the import writes a file named after
/// each step into it and waits until that file is deleted, so a test can kill the
/// process at a known point. `TOKENTLS_TEST_IMPORT_FAIL_AT` names a step (such as
/// `certificate`) at which the import fails as if the token had refused the write.
enum ImportStepHook {
    static let pauseFolder = ProcessInfo.processInfo.environment["TOKENTLS_TEST_IMPORT_PAUSE"]
    static let failingStep = ProcessInfo.processInfo.environment["TOKENTLS_TEST_IMPORT_FAIL_AT"]

    struct InjectedFailure: Error, CustomStringConvertible {
        let step: String
        var description: String { "test failure injected after writing the \(step)" }
    }

    static func reached(_ step: String) throws {
        let name = step.replacingOccurrences(of: " ", with: "-")
        if let pauseFolder {
            let marker = pauseFolder + "/" + name
            _ = FileManager.default.createFile(atPath: marker, contents: nil)
            while FileManager.default.fileExists(atPath: marker) {
                usleep(10_000)
            }
        }
        if failingStep == name {
            throw InjectedFailure(step: step)
        }
    }
}

/// Minimal DER encoding for the few values PKCS#11 wants wrapped.
enum DER {
    static func octetString(_ content: [UInt8]) -> [UInt8] {
        [0x04] + length(content.count) + content
    }

    static func length(_ count: Int) -> [UInt8] {
        if count < 0x80 {
            return [UInt8(count)]
        }
        var bytes: [UInt8] = []
        var remaining = count
        while remaining > 0 {
            bytes.insert(UInt8(remaining & 0xff), at: 0)
            remaining >>= 8
        }
        return [0x80 | UInt8(bytes.count)] + bytes
    }
}
