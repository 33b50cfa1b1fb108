import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

/// `tokentls request` as a user runs it: output, messages and exit statuses.
@Suite("tokentls request")
struct RequestCommandTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    private func importedToken(_ pfx: String = "client.pfx") throws -> (TokenStore, Identity) {
        let store = try environment.makeToken("request")
        let identity = try store.importIdentity(environment.pfx(pfx), exportable: false).identity
        return (store, identity)
    }

    @Test("walk-through host name through --resolve")
    func resolvedHostName() throws {
        let (store, identity) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://myhost:\(server.mtlsPort)/hello-world.txt", "--resolve",
                "myhost:\(server.mtlsPort):127.0.0.1",
                "--cacert", environment.certificate("server-ca.crt"), "--thumbprint", identity.thumbprint, "-i",
            ], token: store.token.label)
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("X-Client-Verify: SUCCESS"))
        #expect(result.standardOutput.hasSuffix("mTLS Hello World!\n"))
        #expect(result.standardError.isEmpty)
    }

    @Test("key URI selects the identity")
    func keyURI() throws {
        let (_, identity) = try importedToken("client-ec384.pfx")
        let uri = try #require(identity.privateKeyURI)
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--key-uri", uri, "-i",
            ], token: nil)
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("X-Client-Fingerprint: \(identity.thumbprint.lowercased())"))
    }

    @Test("token without PSS uses PKCS#1 on TLS 1.2")
    func noPSSTokenTLS12() throws {
        let (store, identity) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint, "-i",
            ], token: store.token.label,
            environment: ["SOFTHSM2_CONF": environment.noPSSConfiguration.path, "TOKENTLS_TRACE": "1"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("X-Client-Verify: SUCCESS"))
        #expect(result.standardOutput.contains("X-TLS-Protocol: TLSv1.2"))
        #expect(result.standardError.contains("C_SignInit CKM_RSA_PKCS -> CKR_OK"))
        #expect(!result.standardError.contains("CKM_RSA_PKCS_PSS"))
    }

    @Test("token without PSS against TLS 1.3 only")
    func noPSSTokenTLS13() throws {
        let (store, identity) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtls13Port)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint,
            ], token: store.token.label, environment: ["SOFTHSM2_CONF": environment.noPSSConfiguration.path])
        #expect(result.status == 4)
        #expect(result.standardError.contains("TLS 1.3 requires"), "\(result.standardError)")
        #expect(result.standardError.contains("RSA-PSS"))

        let forced = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtls13Port)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint, "--tlsv1.3",
            ], token: store.token.label, environment: ["SOFTHSM2_CONF": environment.noPSSConfiguration.path])
        #expect(forced.status == 1)
        #expect(forced.standardError.contains("TLS 1.3 is impossible"), "\(forced.standardError)")
    }

    @Test("no certificate sent is explained")
    func noCertificate() throws {
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
            ],
            token: nil)
        #expect(result.status == 0)
        #expect(result.standardOutput.contains("400 No required SSL certificate was sent"))
        #expect(result.standardError.contains("the server requires a client certificate and none was sent"))

        let failing = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--fail",
            ], token: nil)
        #expect(failing.status == 6)
        #expect(failing.standardOutput.isEmpty)
        #expect(failing.standardError.contains("returned HTTP 400"))
    }

    @Test("client certificate from an untrusted CA")
    func untrustedClientCertificate() throws {
        // The server certificate, made into a client identity: nginx does not trust its CA for clients.
        let pfx = environment.root.appendingPathComponent("server-as-client-\(UUID().uuidString).pfx").path
        let made = try TestEnvironment.run(
            "/usr/bin/openssl",
            [
                "pkcs12", "-export", "-in", environment.certificate("server.crt"), "-inkey",
                environment.certificate("server.key"),
                "-out", pfx, "-passout", "pass:",
            ])
        #expect(made.status == 0, "\(made.standardError)")
        let store = try environment.makeToken("untrusted")
        let contents = try PFX.decode(Array(try Data(contentsOf: URL(fileURLWithPath: pfx))), password: nil, source: pfx)
        let identity = try store.importIdentity(contents, exportable: false).identity
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint,
            ], token: store.token.label)
        #expect(result.status == 0)
        #expect(result.standardError.contains("the server rejected the client certificate"), "\(result.standardError)")
    }

    @Test("server certificate not trusted")
    func untrustedServer() throws {
        let result = try environment.tokentls(["request", "https://localhost:\(server.tlsPort)/hello-world.txt"], token: nil)
        #expect(result.status == 4)
        #expect(result.standardError.contains("is not trusted"), "\(result.standardError)")
        #expect(result.standardError.contains("--cacert"))
    }

    @Test("server certificate for another name")
    func wrongHostName() throws {
        let result = try environment.tokentls(
            [
                "request", "https://otherhost:\(server.tlsPort)/hello-world.txt", "--resolve",
                "otherhost:\(server.tlsPort):127.0.0.1",
                "--cacert", environment.certificate("server-ca.crt"),
            ], token: nil)
        #expect(result.status == 4)
        #expect(result.standardError.contains("not valid for its host name"), "\(result.standardError)")
    }

    @Test("wrong PIN ends cleanly")
    func wrongPIN() throws {
        let (store, identity) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint,
            ], token: store.token.label, environment: ["TOKENTLS_PIN": "not-the-pin"])
        #expect(result.status == 3)
        #expect(!result.terminatedBySignal)
        #expect(
            result.standardError
                == "tokentls: error: wrong PIN for \(store.token): check TOKENTLS_PIN, --pin-file or what you typed; repeated failures can lock the token\n"
        )
        #expect(!result.standardError.contains("not-the-pin"))
    }

    @Test("unknown thumbprint")
    func unknownThumbprint() throws {
        let (store, _) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/", "--thumbprint",
                "00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 00 11 22 33",
            ],
            token: store.token.label)
        #expect(result.status == 1)
        #expect(result.standardError.contains("no certificate with thumbprint 00112233445566778899AABBCCDDEEFF00112233"))
    }

    @Test("URL that is not HTTPS")
    func plainHTTP() throws {
        let result = try environment.tokentls(["request", "http://localhost:\(server.tlsPort)/"], token: nil)
        #expect(result.status == 2)
        #expect(result.standardError.contains("HTTPS only"))
    }

    @Test("connection refused")
    func refused() throws {
        let port = try freePorts(1)[0]
        let result = try environment.tokentls(["request", "https://127.0.0.1:\(port)/"], token: nil)
        #expect(result.status == 5)
        #expect(result.standardError.contains("cannot connect"))
    }

    @Test("server that never answers times out")
    func timeout() throws {
        let silent = try SilentServer()
        let result = try environment.tokentls(["request", "https://127.0.0.1:\(silent.port)/", "--max-time", "1"], token: nil)
        #expect(result.status == 5)
        #expect(result.standardError.contains("timed out"), "\(result.standardError)")
    }

    @Test("POST body and custom header")
    func postBody() throws {
        let (store, identity) = try importedToken()
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint, "-X", "POST", "-d", "a=1", "-H", "X-Test: yes", "-i",
            ], token: store.token.label)
        // nginx serves static files to GET only, so a POST gets 405 from a verified client.
        #expect(result.status == 0)
        #expect(result.standardOutput.hasPrefix("HTTP/1.1 405"))
        #expect(result.standardOutput.contains("X-Client-Verify: SUCCESS"))
    }
}

@Suite("tokentls request with the root store")
struct RootStoreRequestTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    @Test("trusted server CA needs no --cacert")
    func trustedWithoutCACert() throws {
        let token = try environment.makeToken("root-request").token
        let url = "https://localhost:\(server.tlsPort)/hello-world.txt"
        let before = try environment.tokentls(["request", url], token: token.label)
        #expect(before.status == 4)
        #expect(
            before.standardError.contains("issued by CN=TokenTLS Test Server CA, which is not trusted"), "\(before.standardError)"
        )

        let added = try environment.tokentls(
            ["trust", "add", environment.certificate("server-ca.crt")], token: token.label,
            environment: ["TOKENTLS_SO_PIN": TestEnvironment.securityOfficerPIN])
        #expect(added.status == 0, "\(added.standardError)")

        let after = try environment.tokentls(["request", url], token: token.label)
        #expect(after.status == 0, "\(after.standardError)")
        #expect(after.standardOutput == "TLS Hello World!\n")

        let rootOnly = try environment.tokentls(["request", url, "--root-store-only"], token: token.label)
        #expect(rootOnly.status == 0, "\(rootOnly.standardError)")
    }

    @Test("automatic selection from the command line")
    func automaticSelection() throws {
        let store = try environment.makeToken("root-select")
        let identity = try store.importIdentity(environment.pfx("client-selected.pfx"), exportable: false).identity
        _ = try store.importIdentity(environment.pfx("client-other.pfx"), exportable: false)
        let result = try environment.tokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "-i", "-v",
            ], token: store.token.label)
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("X-Client-Fingerprint: \(identity.thumbprint.lowercased())"))
        #expect(result.standardError.contains("* tokentls: chose \(identity.thumbprint)"))
        #expect(result.standardError.contains("which the server does not list"))
    }
}
