import CP11Kit
import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

/// Each way of taking a private key out of the token, tried on a key imported without
/// --exportable (must fail) and, where it applies, with it (must work).
@Suite("Key export refusal")
struct ExportRefusalTests {
    let environment = TestEnvironment.shared

    static let secretAttributes: [(pfx: String, attributes: [UInt])] = [
        (
            "client.pfx",
            [
                UInt(CKA_PRIVATE_EXPONENT), UInt(CKA_PRIME_1), UInt(CKA_PRIME_2), UInt(CKA_EXPONENT_1), UInt(CKA_EXPONENT_2),
                UInt(CKA_COEFFICIENT),
            ]
        ),
        ("client-ec256.pfx", [UInt(CKA_VALUE)]),
    ]

    @Test("secret attributes are sensitive", arguments: secretAttributes)
    func secretAttributesSensitive(_ fixture: (pfx: String, attributes: [UInt])) throws {
        let store = try environment.makeToken("sensitive")
        let identity = try store.importIdentity(environment.pfx(fixture.pfx), exportable: false).identity
        let key = try #require(identity.privateKeyObject)
        try store.pool.withSession { session in
            for attribute in fixture.attributes {
                let returnValue = session.attributeReturnValue(key, attribute)
                #expect(
                    returnValue == UInt(CKR_ATTRIBUTE_SENSITIVE),
                    "attribute 0x\(String(attribute, radix: 16)) gave \(PKCS11Error.name(ofReturnValue: returnValue))")
            }
        }
    }

    @Test("wrapping is refused")
    func wrapRefused() throws {
        let store = try environment.makeToken("wrap")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let key = try #require(identity.privateKeyObject)
        try store.pool.withSession { session in
            let wrappingKey = try makeWrappingKey(session)
            let error = #expect(throws: PKCS11Error.self) {
                try session.wrapKey(.aesKeyWrapPad, wrappingKey: wrappingKey, key: key)
            }
            #expect(error?.returnValue == UInt(CKR_KEY_UNEXTRACTABLE))
            #expect(error?.function == "C_WrapKey")
        }
    }

    @Test("wrapping works for an exportable key")
    func wrapExportable() throws {
        let store = try environment.makeToken("wrap-exportable")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: true).identity
        let key = try #require(identity.privateKeyObject)
        let wrapped = try store.pool.withSession { session in
            try session.wrapKey(.aesKeyWrapPad, wrappingKey: try makeWrappingKey(session), key: key)
        }
        #expect(wrapped.count > 1000)
    }

    @Test("extractable and sensitive cannot be reset")
    func attributesCannotBeReset() throws {
        let store = try environment.makeToken("reset")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let key = try #require(identity.privateKeyObject)
        try store.pool.withSession { session in
            #expect(throws: PKCS11Error.self) {
                try session.setAttributes(key, [.bool(UInt(CKA_EXTRACTABLE), true)])
            }
            #expect(throws: PKCS11Error.self) {
                try session.setAttributes(key, [.bool(UInt(CKA_SENSITIVE), false)])
            }
            let values = try session.attributes(key, [UInt(CKA_EXTRACTABLE), UInt(CKA_SENSITIVE)])
            #expect(boolValue(values[UInt(CKA_EXTRACTABLE)]) == false)
            #expect(boolValue(values[UInt(CKA_SENSITIVE)]) == true)
        }
    }

    @Test("copy cannot make an extractable key")
    func copyRefused() throws {
        let store = try environment.makeToken("copy")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let key = try #require(identity.privateKeyObject)
        let before = try allObjects(store)
        try store.pool.withSession { session in
            #expect(throws: PKCS11Error.self) {
                try session.copyObject(key, [.bool(UInt(CKA_EXTRACTABLE), true)])
            }
            #expect(throws: PKCS11Error.self) {
                try session.copyObject(key, [.bool(UInt(CKA_SENSITIVE), false)])
            }
        }
        #expect(try allObjects(store) == before)
    }

    @Test("export-pfx refuses a non-exportable key")
    func exportCommandRefuses() throws {
        let store = try environment.makeToken("export-cli")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let output = environment.root.appendingPathComponent("refused-\(UUID().uuidString).pfx").path
        let result = try environment.tokentls(["export-pfx", identity.thumbprint, "--out", output], token: store.token.label)
        #expect(result.status == 1)
        #expect(result.standardError.contains("non-exportable"))
        #expect(result.standardError.contains("CKA_EXTRACTABLE"))
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test("export-pfx writes an exportable key")
    func exportCommandExportable() throws {
        let store = try environment.makeToken("export-ok")
        let identity = try store.importIdentity(environment.pfx("client-ec384.pfx"), exportable: true).identity
        let output = environment.root.appendingPathComponent("exported-\(UUID().uuidString).pfx").path
        let result = try environment.tokentls(
            ["export-pfx", identity.thumbprint, "--out", output], token: store.token.label,
            environment: ["TOKENTLS_PFX_PASSWORD": "export-password"])
        #expect(result.status == 0, "\(result.standardError)")
        let reread = try PFX.decode(
            Array(try Data(contentsOf: URL(fileURLWithPath: output))), password: SecretBytes(utf8: "export-password"),
            source: output)
        #expect(reread.certificate == identity.certificate)
        let attributes = try FileManager.default.attributesOfItem(atPath: output)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test("pkcs11-tool cannot read the key")
    func pkcs11ToolWitness() throws {
        let store = try environment.makeToken("witness")
        _ = try store.importIdentity(environment.pfx("client.pfx"), exportable: false)
        _ = try store.importIdentity(environment.pfx("client-ec256.pfx"), exportable: true)
        let tool = "/usr/bin/pkcs11-tool"
        let common = [
            "--module", Module.defaultPath, "--token-label", store.token.label, "--login", "--pin", TestEnvironment.userPIN,
        ]
        var environment = ProcessInfo.processInfo.environment
        environment["SOFTHSM2_CONF"] = self.environment.softHSMConfiguration.path

        let read = try TestEnvironment.run(
            tool, common + ["--read-object", "--type", "privkey", "--label", "TokenTLS Test Client"], environment: environment)
        // pkcs11-tool 0.23 prints "reading private keys not (yet) supported" and exits 0,
        // so the check is that no key material came out.
        #expect(!read.standardOutput.contains("PRIVATE KEY"))
        #expect(read.standardOutput.utf8.count < 200)

        // The tool's own reading of the key flags: only the exportable key is extractable.
        let listing = try TestEnvironment.run(tool, common + ["--list-objects", "--type", "privkey"], environment: environment)
        #expect(listing.status == 0, "\(listing.standardError)")
        let blocks = listing.standardOutput.components(separatedBy: "Private Key Object")
        let rsa = try #require(blocks.first { $0.contains("RSA") })
        let ec = try #require(blocks.first { $0.contains("EC") })
        let rsaAccess = try #require(rsa.split(separator: "\n").first { $0.contains("Access:") })
        let ecAccess = try #require(ec.split(separator: "\n").first { $0.contains("Access:") })
        #expect(rsaAccess.contains("sensitive"))
        #expect(!rsaAccess.contains("extractable"))
        #expect(ecAccess.contains("sensitive"))
        #expect(ecAccess.contains("extractable"))
    }

    private func makeWrappingKey(_ session: Session) throws -> ObjectHandle {
        try session.generateKey(
            .aesKeyGeneration,
            template: [
                .ulong(UInt(CKA_CLASS), UInt(CKO_SECRET_KEY)), .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_AES)),
                .ulong(UInt(CKA_VALUE_LEN), 32),
                .bool(UInt(CKA_TOKEN), false), .bool(UInt(CKA_WRAP), true),
            ])
    }
}
