import CP11Kit
import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

@Suite("Root store and verify")
struct TrustStoreTests {
    let environment = TestEnvironment.shared

    private func trustCommand(_ arguments: [String], token: Token) throws -> ProcessResult {
        try environment.tokentls(
            arguments, token: token.label, environment: ["TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN])
    }

    @Test("user PIN cannot plant a trust anchor")
    func userCannotSetTrusted() throws {
        let store = try environment.makeToken("trust-user")
        let certificate = try Certificate.readAll(
            Array(try Data(contentsOf: URL(fileURLWithPath: environment.certificate("server-ca.crt")))), source: "server-ca.crt")[
                0]
        try store.pool.withSession { session in
            let error = #expect(throws: PKCS11Error.self) {
                try session.createObject([
                    .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)), .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
                    .bool(UInt(CKA_TOKEN), true), .bool(UInt(CKA_TRUSTED), true),
                    .bytes(UInt(CKA_SUBJECT), certificate.subjectDER),
                    .bytes(UInt(CKA_VALUE), certificate.der),
                ])
            }
            #expect(error?.returnValue == UInt(CKR_ATTRIBUTE_READ_ONLY))
        }
        #expect(try TrustStore(token: store.token).anchors().isEmpty)
    }

    @Test("add, list and remove")
    func addListRemove() throws {
        let token = try environment.makeToken("trust-cli").token
        let added = try trustCommand(["trust", "add", environment.certificate("server-ca.crt")], token: token)
        #expect(added.status == 0, "\(added.standardError)")
        #expect(added.standardOutput.contains("Added to the root store"))

        let again = try trustCommand(["trust", "add", environment.certificate("server-ca.crt")], token: token)
        #expect(again.status == 0)
        #expect(again.standardOutput.contains("Already in the root store, nothing written"))

        let thumbprint = try opensslFingerprint(environment.certificate("server-ca.crt"))
        let listed = try trustCommand(["trust", "list"], token: token)
        #expect(listed.standardOutput.contains(thumbprint))
        #expect(try TrustStore(token: token).anchors().count == 1)

        let removed = try trustCommand(["trust", "remove", thumbprint], token: token)
        #expect(removed.status == 0, "\(removed.standardError)")
        #expect(try TrustStore(token: token).anchors().isEmpty)

        let unknown = try trustCommand(["trust", "remove", thumbprint], token: token)
        #expect(unknown.status == 1)
        #expect(unknown.standardError.contains("no trust anchor with thumbprint \(thumbprint)"))
    }

    @Test("non-CA certificate is rejected")
    func rejectsLeaf() throws {
        let token = try environment.makeToken("trust-leaf").token
        let result = try trustCommand(["trust", "add", environment.certificate("server.crt")], token: token)
        #expect(result.status == 1)
        #expect(result.standardError.contains("is not a CA certificate"))
        #expect(try TrustStore(token: token).anchors().isEmpty)
    }

    @Test("wrong SO PIN adds nothing")
    func wrongSecurityOfficerPIN() throws {
        let token = try environment.makeToken("trust-pin").token
        let result = try environment.tokentls(
            ["trust", "add", environment.certificate("server-ca.crt")], token: token.label,
            environment: ["TOKENTLS_SO_PIN": "wrong-so-pin"])
        #expect(result.status == 3)
        #expect(result.standardError.contains("wrong security officer PIN"))
        #expect(try TrustStore(token: token).anchors().isEmpty)
    }

    struct VerifyCase: Sendable, CustomStringConvertible {
        let name: String
        let arguments: [String]
        let status: Int32
        let expected: String
        var description: String { name }
    }

    static let verifyCases: [VerifyCase] = [
        VerifyCase(name: "valid client", arguments: ["client.crt"], status: 0, expected: "Result: valid for ssl-client"),
        VerifyCase(name: "expired client", arguments: ["client-expired.crt"], status: 1, expected: "expired on 2021-01-01"),
        VerifyCase(
            name: "issuer not trusted", arguments: ["client-other.crt"], status: 1,
            expected: "its issuer CN=TokenTLS Other Client CA is not in the root store"),
        VerifyCase(
            name: "server, right name", arguments: ["server.crt", "--dns-name", "myhost"], status: 0,
            expected: "Result: valid for ssl-server, DNS name myhost"),
        VerifyCase(
            name: "server, wrong name", arguments: ["server.crt", "--dns-name", "otherhost"], status: 1,
            expected: "not valid for the DNS name otherhost"),
        VerifyCase(
            name: "server cert as client", arguments: ["client-serverauth.crt", "--policy", "ssl-client"], status: 1,
            expected: "does not allow ssl-client"),
    ]

    @Test("verify reports each problem", arguments: verifyCases)
    func verify(_ testCase: VerifyCase) throws {
        let token = try environment.makeToken("verify").token
        for authority in ["client-ca.crt", "server-ca.crt"] {
            let added = try trustCommand(["trust", "add", environment.certificate(authority)], token: token)
            #expect(added.status == 0, "\(added.standardError)")
        }
        var arguments = testCase.arguments
        arguments[0] = environment.certificate(arguments[0])
        let result = try environment.tokentls(["verify", "--root-store-only"] + arguments, token: token.label)
        #expect(result.status == testCase.status, "\(result.standardOutput)\(result.standardError)")
        #expect(result.standardOutput.contains(testCase.expected), "\(result.standardOutput)")
        #expect(result.standardOutput.hasPrefix("Chain:\n  0  "))
    }

    @Test("verify by thumbprint uses the token")
    func verifyThumbprint() throws {
        let store = try environment.makeToken("verify-thumbprint")
        let identity = try store.importIdentity(environment.pfx("client-chain.pfx"), exportable: false).identity
        let added = try trustCommand(["trust", "add", environment.certificate("client-ca.crt")], token: store.token)
        #expect(added.status == 0)
        // The intermediate CA comes from the token, where the PFX import stored it.
        let result = try environment.tokentls(["verify", identity.thumbprint, "--root-store-only"], token: store.token.label)
        #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
        #expect(result.standardOutput.contains("CN=TokenTLS Test Intermediate CA"))
        #expect(result.standardOutput.split(separator: "\n").filter { $0.hasPrefix("  ") }.count == 3)
    }
}
