import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore
import TokenTLS

/// The error cases of docs/errors.md that need a special token or server: each checks
/// the message, the exit status and that the token contains what it contained before.
@Suite("Error cases")
struct ErrorCaseTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    /// Returns the token's visible state as a user sees it: the listing and any warnings.
    private func snapshot(_ label: String, _ extra: [String: String] = [:]) throws -> String {
        let listed = try environment.tokentls(["list"], token: label, environment: extra)
        return listed.standardOutput + listed.standardError
    }

    @Test("certificate without a key")
    func certificateWithoutKey() throws {
        let store = try environment.makeToken("nokey")
        _ = try store.importIdentity(environment.pfx("client.pfx"), exportable: false)
        let authority = try opensslFingerprint(environment.certificate("client-ca.crt"))
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/", "--cacert", environment.certificate("server-ca.crt"),
                "--thumbprint", authority,
            ],
            token: store.token.label)
        #expect(result.status == 1)
        #expect(
            result.standardError.contains("\(authority) (CN=TokenTLS Test Client CA) has no private key"),
            "\(result.standardError)")
    }

    @Test("two certificates share one key")
    func renewedCertificate() throws {
        // A renewed certificate for the same key pair: its objects share the CKA_ID.
        let folder = environment.root.appendingPathComponent("renewed-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let signed = try TestEnvironment.run(
            "/usr/bin/openssl",
            [
                "req", "-new", "-x509", "-key", environment.certificate("client.key"), "-subj", "/CN=TokenTLS Test Client",
                "-days", "30",
                "-out", folder + "/renewed.crt",
            ])
        #expect(signed.status == 0, "\(signed.standardError)")
        let exported = try TestEnvironment.run(
            "/usr/bin/openssl",
            [
                "pkcs12", "-export", "-inkey", environment.certificate("client.key"), "-in", folder + "/renewed.crt", "-out",
                folder + "/renewed.pfx", "-passout", "pass:",
            ])
        #expect(exported.status == 0)
        let store = try environment.makeToken("renewed")
        _ = try store.importIdentity(environment.pfx("client.pfx"), exportable: false)
        let result = try environment.tokentls(["import-pfx", folder + "/renewed.pfx"], token: store.token.label)
        #expect(result.status == 0, "\(result.standardError)")
        // A fresh process reads the token as the other process left it.
        let listed = try environment.tokentls(["list", "--json"], token: store.token.label)
        #expect(listed.status == 0, "\(listed.standardError)")
        let rows = try JSONSerialization.jsonObject(with: Data(listed.standardOutput.utf8)) as? [[String: Any]] ?? []
        let withKey = rows.filter { $0["hasPrivateKey"] as? Bool == true }
        #expect(withKey.count == 2)
        #expect(Set(withKey.compactMap { $0["keyURI"] as? String }).count == 1)
        #expect(listed.standardError.isEmpty)
    }

    @Test(
        "token labels",
        arguments: [
            ("trailing ", Int32(2), "starts or ends with a blank"),
            ("ключ-токена", Int32(0), "Initialised token \"ключ-токена\""),
            (String(repeating: "é", count: 17), Int32(2), "it must be 1 to 32 bytes of UTF-8 text, and it has 34"),
        ])
    func tokenLabels(_ label: String, _ status: Int32, _ message: String) throws {
        let result = try environment.tokentls(
            ["token", "init", "--label", label], token: nil, environment: ["TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN])
        #expect(result.status == status, "\(result.standardError)")
        #expect(
            (result.standardOutput + result.standardError).contains(message), "\(result.standardOutput)\(result.standardError)")
        if status == 0 {
            let listed = try environment.tokentls(["list"], token: label)
            #expect(listed.status == 0, "\(listed.standardError)")
        } else {
            // Other tests create tokens meanwhile, so look for this label only.
            let trimmed = label.trimmingCharacters(in: .whitespaces)
            #expect(
                try environment.module.tokens().filter { $0.isInitialized && ($0.label == label || $0.label == trimmed) }.isEmpty)
        }
    }

    @Test("PIN with special characters")
    func specialPIN() throws {
        let pin = "p&;%?/ün€"
        let label = "special-pin-\(UUID().uuidString.prefix(6))"
        let made = try environment.tokentls(
            ["token", "init", "--label", label], token: nil,
            environment: ["TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN, "TOKENTLS_PIN": pin])
        #expect(made.status == 0, "\(made.standardError)")
        let pinFile = environment.root.appendingPathComponent("pin-\(UUID().uuidString)").path
        try (pin + "\n").write(toFile: pinFile, atomically: true, encoding: .utf8)
        // --pin-file wins over TOKENTLS_PIN, even an empty one.
        let imported = try environment.tokentls(
            ["import-pfx", environment.certificate("client-ec384.pfx"), "--pin-file", pinFile], token: label,
            environment: ["TOKENTLS_PIN": ""])
        #expect(imported.status == 0, "\(imported.standardError)")
        let empty = try environment.tokentls(["list"], token: label, environment: ["TOKENTLS_PIN": ""])
        #expect(empty.status == 2)
        #expect(empty.standardError.contains("the PIN is empty"))
        var variables = ProcessInfo.processInfo.environment
        variables["SOFTHSM2_CONF"] = environment.softHSMConfiguration.path
        variables["TOKENTLS_TOKEN"] = label
        variables.removeValue(forKey: "TOKENTLS_PIN")
        let fromFile = try TestEnvironment.run(
            environment.binary, ["import-pfx", environment.certificate("client-ec256.pfx"), "--pin-file", pinFile],
            environment: variables)
        #expect(fromFile.status == 0, "\(fromFile.standardError)")
        #expect(!fromFile.standardError.contains(pin))
    }

    @Test("read-only token folder", .enabled(if: getuid() == 0, "mounting needs root"))
    func readOnlyFolder() throws {
        let (configuration, tokens, label) = try privateSoftHSM("readonly")
        let settings = ["SOFTHSM2_CONF": configuration]
        let before = try snapshot(label, settings)
        #expect(try TestEnvironment.run("/bin/mount", ["--bind", tokens, tokens]).status == 0)
        defer { _ = try? TestEnvironment.run("/bin/umount", [tokens]) }
        #expect(try TestEnvironment.run("/bin/mount", ["-o", "remount,ro,bind", tokens]).status == 0)

        let result = try environment.tokentls(
            ["import-pfx", environment.certificate("client.pfx")], token: label, environment: settings)
        #expect(result.status == 1, "\(result.standardError)")
        #expect(result.standardError.hasPrefix("tokentls: error: "))
        #expect(result.standardError.split(separator: "\n").count == 1, "\(result.standardError)")
        #expect(!result.terminatedBySignal)
        _ = try TestEnvironment.run("/bin/umount", [tokens])
        #expect(try snapshot(label, settings) == before)
    }

    @Test("full disk while importing", .enabled(if: getuid() == 0, "mounting needs root"))
    func fullDisk() throws {
        let base = environment.root.appendingPathComponent("full-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        #expect(try TestEnvironment.run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", base]).status == 0)
        defer { _ = try? TestEnvironment.run("/bin/umount", [base]) }
        let (configuration, _, label) = try privateSoftHSM("full", in: base)
        let settings = ["SOFTHSM2_CONF": configuration]
        let before = try snapshot(label, settings)

        // Fill what is left of the file system.
        let filler = FileManager.default.createFile(atPath: base + "/filler", contents: nil)
        #expect(filler)
        if let handle = FileHandle(forWritingAtPath: base + "/filler") {
            let block = Data(count: 4096)
            while (try? handle.write(contentsOf: block)) != nil {}
            try? handle.close()
        }
        let result = try environment.tokentls(
            ["import-pfx", environment.certificate("client-chain.pfx")], token: label, environment: settings)
        #expect(result.status == 1, "\(result.standardError)")
        #expect(result.standardError.hasPrefix("tokentls: error: "), "\(result.standardError)")
        #expect(result.standardError.contains("nothing was kept"), "\(result.standardError)")
        #expect(result.standardError.contains("storage may be full or read-only"), "\(result.standardError)")
        #expect(!result.terminatedBySignal)
        try FileManager.default.removeItem(atPath: base + "/filler")
        #expect(try snapshot(label, settings) == before)
    }

    /// Creates a SoftHSM configuration of its own, with one token that contains one identity.
    private func privateSoftHSM(_ name: String, in base: String? = nil) throws -> (
        configuration: String, tokens: String, label: String
    ) {
        let folder = base ?? environment.root.appendingPathComponent("\(name)-\(UUID().uuidString)").path
        let tokens = folder + "/tokens"
        try FileManager.default.createDirectory(atPath: tokens, withIntermediateDirectories: true)
        let configuration = folder + "/softhsm2.conf"
        try StoreLocation.softHSMConfiguration(tokenFolder: tokens).write(
            toFile: configuration, atomically: true, encoding: .utf8)
        let label = name
        let settings = ["SOFTHSM2_CONF": configuration, "TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN]
        let made = try environment.tokentls(["token", "init", "--label", label], token: nil, environment: settings)
        #expect(made.status == 0, "\(made.standardError)")
        let imported = try environment.tokentls(
            ["import-pfx", environment.certificate("client-ec256.pfx")], token: label, environment: settings)
        #expect(imported.status == 0, "\(imported.standardError)")
        return (configuration, tokens, label)
    }

    @Test("server closes mid-handshake")
    func closedMidHandshake() throws {
        let closing = try ClosingServer()
        let result = try environment.tokentls(["request", "https://127.0.0.1:\(closing.port)/", "--max-time", "5"], token: nil)
        #expect(result.status == 5, "\(result.standardError)")
        #expect(result.standardError.contains("closed the connection"), "\(result.standardError)")
    }

    @Test("server restarts between requests")
    func serverRestart() throws {
        let ports = try freePorts(2)
        let folder = environment.root.appendingPathComponent("restart-\(UUID().uuidString)").path
        let script = environment.packageRoot.appendingPathComponent("scripts/test-server").path
        let arguments = [
            "--certs", environment.certificates.path, "--dir", folder, "--tls-port", "\(ports[0])", "--mtls-port", "\(ports[1])",
        ]
        #expect(try TestEnvironment.run(script, ["start"] + arguments).status == 0)
        defer { _ = try? TestEnvironment.run(script, ["stop", "--dir", folder]) }

        let store = try environment.makeToken("restart")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let client = HTTPClient(identity: try ClientIdentity(store: store, identity: identity))
        var request = HTTPRequest(url: "https://localhost:\(ports[1])/hello-world.txt")
        request.caFile = environment.certificate("server-ca.crt")

        #expect(try client.perform(request).header("X-Client-Verify") == "SUCCESS")
        #expect(try TestEnvironment.run(script, ["stop", "--dir", folder]).status == 0)
        #expect(throws: TLSError(.connection, "")) { try client.perform(request) }
        #expect(try TestEnvironment.run(script, ["start"] + arguments).status == 0)
        #expect(try client.perform(request).header("X-Client-Verify") == "SUCCESS")
        #expect(client.identity?.signatureCount == 2)
    }

    struct Case: Sendable, CustomStringConvertible {
        let name: String
        let arguments: [String]
        let status: Int32
        let message: String
        var description: String { name }
    }

    static let commandCases: [Case] = [
        Case(
            name: "thumbprint and key URI",
            arguments: ["request", "https://localhost/", "--thumbprint", "00", "--key-uri", "pkcs11:object=x"], status: 2,
            message: "give either --thumbprint or --key-uri, not both"),
        Case(
            name: "invalid --tls-max", arguments: ["request", "https://localhost/", "--tls-max", "1.1"], status: 2,
            message: "invalid --tls-max \"1.1\": use 1.2 or 1.3"),
        Case(
            name: "--tls-max below minimum", arguments: ["request", "https://localhost/", "--tlsv1.3", "--tls-max", "1.2"],
            status: 2, message: "--tls-max 1.2 is below the minimum TLS 1.3"),
        Case(
            name: "malformed --resolve", arguments: ["request", "https://localhost/", "--resolve", "myhost"], status: 2,
            message: "invalid --resolve \"myhost\": expected HOST:PORT:ADDRESS"),
        Case(
            name: "invalid timeout", arguments: ["request", "https://localhost/", "--connect-timeout", "soon"], status: 2,
            message: "invalid --connect-timeout \"soon\": expected a positive number of seconds"),
        Case(
            name: "missing --cacert file", arguments: ["request", "https://localhost/", "--cacert", "/nonexistent/ca.pem"],
            status: 2, message: "cannot read the --cacert file /nonexistent/ca.pem"),
        Case(
            name: "key URI with PIN", arguments: ["request", "https://localhost/", "--key-uri", "pkcs11:object=x?pin-value=1"],
            status: 2, message: "pin-value are not accepted"),
        Case(
            name: "export without --out", arguments: ["export-pfx", "00112233445566778899AABBCCDDEEFF00112233"], status: 2,
            message: "'export-pfx' needs --out FILE"),
        Case(
            name: "trust add of a key file", arguments: ["trust", "add", "@certs/client.key"], status: 1,
            message: "contains no certificate"),
        Case(
            name: "verify of nothing", arguments: ["verify", "not-a-file-or-thumbprint"], status: 2,
            message: "is neither a readable certificate file nor a 40-digit SHA-1 thumbprint"),
        Case(name: "unknown command", arguments: ["frobnicate"], status: 2, message: "unknown command 'frobnicate'"),
        Case(
            name: "unknown token subcommand", arguments: ["token", "delete"], status: 2,
            message: "unknown subcommand 'token delete'"),
    ]

    @Test("PIN and token mistakes")
    func pinAndTokenMistakes() throws {
        let store = try environment.makeToken("pin-mistake")
        let label = store.token.label
        let before = try allObjects(store)

        let missingFile = try environment.tokentls(["list", "--pin-file", "/nonexistent/pin"], token: label)
        #expect(missingFile.status == 1)
        #expect(missingFile.standardError.contains("cannot read the PIN file /nonexistent/pin given to --pin-file"))

        var variables = ProcessInfo.processInfo.environment
        variables["SOFTHSM2_CONF"] = environment.softHSMConfiguration.path
        variables["TOKENTLS_TOKEN"] = label
        variables.removeValue(forKey: "TOKENTLS_PIN")
        let withoutPIN = try TestEnvironment.run(environment.binary, ["list"], environment: variables)
        #expect(withoutPIN.status == 2)
        #expect(
            withoutPIN.standardError.contains("no PIN given and no terminal to ask on: set TOKENTLS_PIN or use --pin-file FILE"))

        _ = try environment.makeToken("pin-mistake-second")
        let several = try environment.tokentls(["list"], token: nil)
        #expect(several.status == 2)
        #expect(several.standardError.contains("several tokens are present"))
        #expect(several.standardError.contains("choose one with --token LABEL or TOKENTLS_TOKEN"))

        let taken = try environment.tokentls(
            ["token", "init", "--label", label], token: nil, environment: ["TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN])
        #expect(taken.status == 1)
        #expect(taken.standardError.contains("a token labelled \"\(label)\" already exists"))

        let shortPIN = try environment.tokentls(
            ["token", "init", "--label", "short-\(label)"], token: nil, environment: ["TOKENTLS_SO_PIN": "12"])
        #expect(shortPIN.status == 2)
        #expect(shortPIN.standardError.contains("invalid security officer PIN: it has 2 bytes, and the token accepts 4 to 255"))

        #expect(try allObjects(store) == before)
        let identity = try store.importIdentity(environment.pfx("client-ec256.pfx"), exportable: true).identity
        let imported = try allObjects(store)
        let existing = environment.root.appendingPathComponent("existing-\(UUID().uuidString).pfx").path
        #expect(FileManager.default.createFile(atPath: existing, contents: Data("keep".utf8)))
        let overwrite = try environment.tokentls(
            ["export-pfx", identity.thumbprint, "--out", existing], token: label, environment: ["TOKENTLS_PFX_PASSWORD": "pw"])
        #expect(overwrite.status == 1)
        #expect(overwrite.standardError.contains("already exists: choose another --out file or remove it first"))
        #expect(try String(contentsOfFile: existing, encoding: .utf8) == "keep")
        #expect(try allObjects(store) == imported)
    }

    @Test("command-line mistakes", arguments: commandCases)
    func commandMistakes(_ testCase: Case) throws {
        let store = try environment.makeToken("mistake")
        let before = try allObjects(store)
        let arguments = testCase.arguments.map { $0.hasPrefix("@certs/") ? environment.certificate(String($0.dropFirst(7))) : $0 }
        let result = try environment.tokentls(arguments, token: store.token.label)
        #expect(result.status == testCase.status, "\(result.standardError)")
        #expect(result.standardError.contains(testCase.message), "\(result.standardError)")
        #expect(result.standardError.hasPrefix("tokentls: error: "))
        #expect(try allObjects(store) == before)
    }
}

@Suite("Secrets in output")
struct SecretOutputTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    @Test("PIN and password never printed")
    func noSecretsPrinted() throws {
        let pin = "distinctive-pin-6271"
        let password = "distinctive-password-9183"
        let label = "secrets-\(UUID().uuidString.prefix(6))"
        let folder = environment.root.appendingPathComponent("secrets-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let settings = ["TOKENTLS_PIN": pin, "TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN, "TOKENTLS_TRACE": "1"]
        var outputs: [ProcessResult] = []
        outputs.append(try environment.tokentls(["token", "init", "--label", label], token: nil, environment: settings))
        outputs.append(
            try environment.tokentls(
                ["import-pfx", environment.certificate("client.pfx"), "--exportable"], token: label, environment: settings))
        outputs.append(try environment.tokentls(["list", "--json"], token: label, environment: settings))
        let thumbprint = try opensslFingerprint(environment.certificate("client.crt"))
        outputs.append(
            try environment.tokentls(
                [
                    "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                    environment.certificate("server-ca.crt"),
                    "--thumbprint", thumbprint, "-v", "-i",
                ], token: label, environment: settings))
        var exportSettings = settings
        exportSettings["TOKENTLS_PFX_PASSWORD"] = password
        outputs.append(
            try environment.tokentls(
                ["export-pfx", thumbprint, "--out", folder + "/out.pfx"], token: label, environment: exportSettings))
        outputs.append(try environment.tokentls(["list"], token: label, environment: ["TOKENTLS_PIN": pin + "-wrong"]))

        #expect(outputs.prefix(5).allSatisfy { $0.status == 0 }, "\(outputs.map(\.standardError))")
        #expect(outputs[3].standardError.contains("tokentls trace: C_Login"))
        #expect(outputs[3].standardOutput.contains("X-Client-Verify: SUCCESS"))
        for output in outputs {
            let text = output.standardOutput + output.standardError
            #expect(!text.contains(pin), "the PIN appeared in the output")
            #expect(!text.contains(password), "the PFX password appeared in the output")
        }
    }
}
