import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

/// Bad input given to the command-line tool: a clear one-line message, the documented
/// exit status, and the token exactly as it was.
@Suite("Bad input")
struct BadInputTests {
    let environment = TestEnvironment.shared

    struct Case: Sendable, CustomStringConvertible {
        let name: String
        let arguments: [String]
        let environment: [String: String]
        let status: Int32
        let message: String
        var description: String { name }
    }

    static let importCases: [Case] = [
        Case(
            name: "wrong PFX password", arguments: ["import-pfx", "client-legacy.pfx"],
            environment: ["TOKENTLS_PFX_PASSWORD": "wrong"], status: 1, message: "wrong password for"),
        Case(
            name: "password missing", arguments: ["import-pfx", "client-legacy.pfx"], environment: [:], status: 1,
            message: "needs a password and none was given"),
        Case(
            name: "truncated file", arguments: ["import-pfx", "truncated.pfx"], environment: [:], status: 1,
            message: "is not a valid PFX"),
        Case(
            name: "random file", arguments: ["import-pfx", "random.bin"], environment: [:], status: 1,
            message: "is not a valid PFX"),
        Case(name: "empty file", arguments: ["import-pfx", "empty.pfx"], environment: [:], status: 1, message: "is empty"),
        Case(
            name: "no private key", arguments: ["import-pfx", "nokey.pfx"], environment: [:], status: 1,
            message: "contains no private key"),
        Case(
            name: "key does not match", arguments: ["import-pfx", "mismatch.pfx"], environment: [:], status: 1,
            message: "matches none of its"),
        Case(
            name: "Ed25519 key", arguments: ["import-pfx", "ed25519.pfx"], environment: [:], status: 1,
            message: "unsupported key type ED25519"),
        Case(
            name: "DSA key", arguments: ["import-pfx", "dsa.pfx"], environment: [:], status: 1,
            message: "unsupported key type DSA"),
        Case(
            name: "missing file", arguments: ["import-pfx", "no-such-file.pfx"], environment: [:], status: 1,
            message: "no-such-file.pfx: no such file"),
        Case(
            name: "wrong PIN", arguments: ["import-pfx", "client.pfx"], environment: ["TOKENTLS_PIN": "wrong-pin"], status: 3,
            message: "wrong PIN for token"),
        Case(
            name: "unknown thumbprint", arguments: ["remove", "00112233445566778899AABBCCDDEEFF00112233"], environment: [:],
            status: 1, message: "no certificate with thumbprint 00112233445566778899AABBCCDDEEFF00112233"),
        Case(
            name: "malformed thumbprint", arguments: ["remove", "xyz"], environment: [:], status: 1,
            message: "invalid thumbprint \"xyz\""),
        Case(
            name: "unknown option", arguments: ["list", "--pin", "1234"], environment: [:], status: 2,
            message: "unknown option --pin"),
        Case(
            name: "malformed token URI", arguments: ["list", "--token", "pkcs11:token=%zz"], environment: [:], status: 2,
            message: "invalid PKCS#11 URI"),
        Case(
            name: "PIN in token URI", arguments: ["list", "--token", "pkcs11:token=x?pin-value=1234"], environment: [:],
            status: 2, message: "pin-value"),
    ]

    @Test("rejected with message and no change", arguments: importCases)
    func rejected(_ testCase: Case) throws {
        let store = try environment.makeToken("bad")
        _ = try store.importIdentity(environment.pfx("client-ec256.pfx"), exportable: false)
        let before = try allObjects(store)
        let arguments = testCase.arguments.enumerated().map { index, argument in
            index == 1 && argument.hasSuffix(".pfx") || argument.hasSuffix(".bin") ? environment.certificate(argument) : argument
        }
        let result = try environment.tokentls(arguments, token: store.token.label, environment: testCase.environment)
        #expect(result.status == testCase.status, "\(result.standardError)")
        #expect(result.standardError.contains(testCase.message), "\(result.standardError)")
        #expect(result.standardError.hasPrefix("tokentls: error: "))
        #expect(result.standardError.split(separator: "\n").count == 1)
        #expect(!result.terminatedBySignal)
        #expect(try allObjects(store) == before)
    }

    @Test("PFX without MAC needs consent")
    func missingMAC() throws {
        let store = try environment.makeToken("nomac")
        let before = try allObjects(store)
        let refused = try environment.tokentls(["import-pfx", environment.certificate("nomac.pfx")], token: store.token.label)
        #expect(refused.status == 1)
        #expect(refused.standardError.contains("has no integrity check (MAC)"), "\(refused.standardError)")
        #expect(try allObjects(store) == before)
        let accepted = try environment.tokentls(
            ["import-pfx", environment.certificate("nomac.pfx"), "--allow-missing-mac"], token: store.token.label)
        #expect(accepted.status == 0, "\(accepted.standardError)")
    }

    @Test("unknown token label")
    func unknownToken() throws {
        let result = try environment.tokentls(["list"], token: "no-such-token")
        #expect(result.status == 1)
        #expect(result.standardError.contains("no token matches label \"no-such-token\""))
    }

    @Test("missing module path")
    func missingModule() throws {
        let result = try environment.tokentls(["list", "--module", "/nonexistent/libpkcs11.so"], token: nil)
        #expect(result.status == 1)
        #expect(result.standardError.contains("PKCS#11 module /nonexistent/libpkcs11.so not found"))
    }

    @Test("file that is not a module")
    func notAModule() throws {
        let result = try environment.tokentls(["list", "--module", "/bin/ls"], token: nil)
        #expect(result.status == 1)
        #expect(result.standardError.contains("is not a loadable PKCS#11 module"))
    }

    @Test("failed step rolls back", arguments: ["private-key", "public-key", "certificate", "CA-certificate"])
    func failedStepRollsBack(_ step: String) throws {
        let store = try environment.makeToken("rollback")
        let before = try allObjects(store)
        let result = try environment.tokentls(
            ["import-pfx", environment.certificate("client-chain.pfx")], token: store.token.label,
            environment: ["TOKENTLS_TEST_IMPORT_FAIL_AT": step])
        #expect(result.status == 1)
        #expect(result.standardError.contains("nothing was kept"), "\(result.standardError)")
        #expect(try allObjects(store) == before)
    }
}
