import CP11Kit
import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

@Suite("PFX import")
struct ImportTests {
    let environment = TestEnvironment.shared

    static let identities: [(pfx: String, certificate: String, password: String?, keyDescription: String)] = [
        ("client.pfx", "client.crt", nil, "RSA 2048"),
        ("client-legacy.pfx", "client.crt", "legacy-password", "RSA 2048"),
        ("client-3des.pfx", "client.crt", nil, "RSA 2048"),
        ("client-rsa3072.pfx", "client-rsa3072.crt", nil, "RSA 3072"),
        ("client-rsa4096.pfx", "client-rsa4096.crt", nil, "RSA 4096"),
        ("client-ec256.pfx", "client-ec256.crt", nil, "EC P-256"),
        ("client-ec384.pfx", "client-ec384.crt", nil, "EC P-384"),
        ("client-ec521.pfx", "client-ec521.crt", nil, "EC P-521"),
    ]

    @Test("import each key type and format", arguments: identities)
    func importIdentity(_ fixture: (pfx: String, certificate: String, password: String?, keyDescription: String)) throws {
        let store = try environment.makeToken("import")
        let result = try store.importIdentity(environment.pfx(fixture.pfx, password: fixture.password), exportable: false)
        guard case .imported(let identity, _) = result else {
            Issue.record("expected a new import, got \(result)")
            return
        }
        #expect(identity.thumbprint == (try opensslFingerprint(environment.certificate(fixture.certificate))))
        #expect(identity.certificate.keyDescription == fixture.keyDescription)
        #expect(identity.hasPrivateKey)
        #expect(identity.publicKeyObject != nil)
        #expect(identity.isExportable == false)

        let listed = try store.identities().filter(\.hasPrivateKey)
        #expect(listed.map(\.thumbprint) == [identity.thumbprint])
    }

    @Test("private key attributes")
    func privateKeyAttributes() throws {
        let store = try environment.makeToken("attributes")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let key = try #require(identity.privateKeyObject)
        let values = try store.pool.withSession { session in
            try session.attributes(
                key,
                [
                    UInt(CKA_TOKEN), UInt(CKA_PRIVATE), UInt(CKA_SENSITIVE), UInt(CKA_EXTRACTABLE), UInt(CKA_SIGN),
                    UInt(CKA_DECRYPT),
                    UInt(CKA_UNWRAP), UInt(CKA_DERIVE), UInt(CKA_ID),
                ])
        }
        #expect(boolValue(values[UInt(CKA_TOKEN)]) == true)
        #expect(boolValue(values[UInt(CKA_PRIVATE)]) == true)
        #expect(boolValue(values[UInt(CKA_SENSITIVE)]) == true)
        #expect(boolValue(values[UInt(CKA_EXTRACTABLE)]) == false)
        #expect(boolValue(values[UInt(CKA_SIGN)]) == true)
        #expect(boolValue(values[UInt(CKA_DECRYPT)]) == false)
        #expect(boolValue(values[UInt(CKA_UNWRAP)]) == false)
        #expect(boolValue(values[UInt(CKA_DERIVE)]) == false)
        #expect(values[UInt(CKA_ID)] == identity.certificate.keyIdentifier)
        #expect(identity.allowedMechanisms == [UInt(CKM_RSA_PKCS), UInt(CKM_RSA_PKCS_PSS)])
    }

    @Test("chain certificates become objects")
    func chainCertificates() throws {
        let store = try environment.makeToken("chain")
        let result = try store.importIdentity(environment.pfx("client-chain.pfx"), exportable: false)
        guard case .imported(_, let created) = result else {
            Issue.record("expected a new import")
            return
        }
        // Private key, public key, leaf certificate, intermediate CA and root CA.
        #expect(created == 5)
        let thumbprints = Set(try store.identities().map(\.thumbprint))
        #expect(thumbprints.contains(try opensslFingerprint(environment.certificate("intermediate-ca.crt"))))
        #expect(thumbprints.contains(try opensslFingerprint(environment.certificate("client-ca.crt"))))
        #expect(thumbprints.contains(try opensslFingerprint(environment.certificate("client-chain.crt"))))
    }

    @Test("second import writes nothing")
    func duplicateImport() throws {
        let store = try environment.makeToken("duplicate")
        _ = try store.importIdentity(environment.pfx("client.pfx"), exportable: false)
        let before = try allObjects(store)
        let second = try store.importIdentity(environment.pfx("client-3des.pfx"), exportable: false)
        guard case .alreadyPresent = second else {
            Issue.record("expected alreadyPresent, got \(second)")
            return
        }
        #expect(try allObjects(store) == before)
    }

    @Test("remove deletes certificate and keys")
    func remove() throws {
        let store = try environment.makeToken("remove")
        let before = try allObjects(store)
        let identity = try store.importIdentity(environment.pfx("client-ec256.pfx"), exportable: false).identity
        let authority = try store.identities().first { !$0.hasPrivateKey }
        try store.remove(identity)
        let after = try allObjects(store)
        // Only the CA certificate that came with the PFX stays.
        #expect(after.subtracting(before) == Set([authority?.certificateObject].compactMap { $0 }))
        #expect(throws: TokenStoreError(.identityNotFound, "")) {
            try store.identity(thumbprint: identity.thumbprint)
        }
    }

    @Test("thumbprint accepts Windows spelling")
    func thumbprintSpelling() throws {
        let store = try environment.makeToken("spelling")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let lower = identity.thumbprint.lowercased()
        var spaced = ""
        for (index, character) in lower.enumerated() {
            spaced += (index > 0 && index % 2 == 0 ? " " : "") + String(character)
        }
        #expect(try store.identity(thumbprint: "\u{200E}" + spaced).thumbprint == identity.thumbprint)
    }
}
