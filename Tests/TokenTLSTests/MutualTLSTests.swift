import COpenSSL
import CShims
import Foundation
import PKCS11
import Synchronization
import TestSupport
import Testing
import TokenStore

@testable import TokenTLS

/// Full handshakes against nginx on 127.0.0.1. Each test checks what nginx saw (a
/// verified client certificate with the expected fingerprint and protocol) and that
/// the token made exactly one signature for the handshake.
@Suite("Mutual TLS against nginx")
struct MutualTLSTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    struct Case: Sendable, CustomStringConvertible {
        let pfx: String
        let port: KeyPath<TestServer, Int> & Sendable
        let protocolName: String
        let mechanism: String
        var description: String { "\(pfx) over \(protocolName)" }
    }

    static let cases: [Case] = [
        Case(pfx: "client.pfx", port: \.mtls13Port, protocolName: "TLSv1.3", mechanism: "CKM_RSA_PKCS_PSS"),
        Case(pfx: "client.pfx", port: \.mtls12Port, protocolName: "TLSv1.2", mechanism: "CKM_RSA_PKCS_PSS"),
        Case(pfx: "client-ec256.pfx", port: \.mtls13Port, protocolName: "TLSv1.3", mechanism: "CKM_ECDSA"),
        Case(pfx: "client-ec256.pfx", port: \.mtls12Port, protocolName: "TLSv1.2", mechanism: "CKM_ECDSA"),
        Case(pfx: "client-ec384.pfx", port: \.mtls13Port, protocolName: "TLSv1.3", mechanism: "CKM_ECDSA"),
        Case(pfx: "client-ec384.pfx", port: \.mtls12Port, protocolName: "TLSv1.2", mechanism: "CKM_ECDSA"),
        Case(pfx: "client-ec521.pfx", port: \.mtls13Port, protocolName: "TLSv1.3", mechanism: "CKM_ECDSA"),
        Case(pfx: "client-rsa4096.pfx", port: \.mtls12Port, protocolName: "TLSv1.2", mechanism: "CKM_RSA_PKCS_PSS"),
    ]

    @Test("server verifies the token-signed handshake", arguments: cases)
    func verifiedHandshake(_ testCase: Case) throws {
        let store = try environment.makeToken("mtls")
        let identity = try store.importIdentity(environment.pfx(testCase.pfx), exportable: false).identity
        let client = HTTPClient(identity: try ClientIdentity(store: store, identity: identity))
        var request = HTTPRequest(url: "https://localhost:\(server[keyPath: testCase.port])/hello-world.txt")
        request.caFile = environment.certificate("server-ca.crt")

        let response = try client.perform(request)

        #expect(response.status == 200)
        #expect(String(decoding: response.body, as: UTF8.self) == "mTLS Hello World!\n")
        #expect(response.header("X-Client-Verify") == "SUCCESS")
        #expect(response.header("X-Client-Fingerprint") == identity.thumbprint.lowercased())
        #expect(response.header("X-Client-Subject") == identity.certificate.subject)
        #expect(response.header("X-TLS-Protocol") == testCase.protocolName)
        #expect(client.identity?.signatureCount == 1)
        #expect(client.identity?.signaturesByMechanism == [testCase.mechanism: 1])
    }

    @Test("chain identity sends its intermediate")
    func intermediateSent() throws {
        let store = try environment.makeToken("chain")
        let identity = try store.importIdentity(environment.pfx("client-chain.pfx"), exportable: false).identity
        let client = HTTPClient(identity: try ClientIdentity(store: store, identity: identity))
        var request = HTTPRequest(url: "https://localhost:\(server.mtlsPort)/hello-world.txt")
        request.caFile = environment.certificate("server-ca.crt")
        let response = try client.perform(request)
        // nginx trusts only the root client CA, so it can verify the leaf only with
        // the intermediate that TokenTLS sends from the token.
        #expect(response.header("X-Client-Verify") == "SUCCESS")
        #expect(response.header("X-Client-Fingerprint") == identity.thumbprint.lowercased())
    }

    @Test("no identity: nginx reports no certificate")
    func withoutCertificate() throws {
        var request = HTTPRequest(url: "https://localhost:\(server.mtlsPort)/hello-world.txt")
        request.caFile = environment.certificate("server-ca.crt")
        let response = try HTTPClient(identity: nil).perform(request)
        #expect(response.status == 400)
        #expect(String(decoding: response.body, as: UTF8.self).contains("No required SSL certificate was sent"))
        #expect(response.header("X-Client-Verify") == "NONE")
    }

    @Test("threads share one identity", arguments: [(8, 25, "client-ec256.pfx"), (16, 100, "client.pfx")])
    func concurrentRequests(_ load: (threads: Int, requestsPerThread: Int, pfx: String)) throws {
        let store = try environment.makeToken("threads")
        let identity = try store.importIdentity(environment.pfx(load.pfx), exportable: false).identity
        let client = HTTPClient(identity: try ClientIdentity(store: store, identity: identity))
        let url = "https://localhost:\(server.mtlsPort)/hello-world.txt"
        let caFile = environment.certificate("server-ca.crt")
        let threads = load.threads
        let requestsPerThread = load.requestsPerThread
        let verified = Mutex(0)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<requestsPerThread {
                var request = HTTPRequest(url: url)
                request.caFile = caFile
                do {
                    let response = try client.perform(request)
                    if response.header("X-Client-Verify") == "SUCCESS",
                        response.header("X-Client-Fingerprint") == identity.thumbprint.lowercased()
                    {
                        verified.withLock { $0 += 1 }
                    } else {
                        failures.withLock {
                            $0.append("HTTP \(response.status), verify \(response.header("X-Client-Verify") ?? "-")")
                        }
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(3) })")
        #expect(verified.withLock { $0 } == threads * requestsPerThread)
        #expect(client.identity?.signatureCount == threads * requestsPerThread)
    }

    @Test("token key refuses private export")
    func privateExportRefused() throws {
        let store = try environment.makeToken("evp-export")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let tlsIdentity = try ClientIdentity(store: store, identity: identity)
        var parameters: UnsafeMutablePointer<OSSL_PARAM>?
        #expect(EVP_PKEY_todata(tlsIdentity.key, tokentls_evp_pkey_keypair_selection(), &parameters) == 0)
        OSSL_PARAM_free(parameters)
        parameters = nil
        #expect(EVP_PKEY_todata(tlsIdentity.key, tokentls_evp_pkey_public_key_selection(), &parameters) == 1)
        OSSL_PARAM_free(parameters)
        var privateExponent: OpaquePointer?
        #expect(EVP_PKEY_get_bn_param(tlsIdentity.key, "d", &privateExponent) == 0)
        #expect(privateExponent == nil)
        ERR_clear_error()
        #expect(tlsIdentity.signatureCount == 0)
    }
}

@Suite("Fork")
struct ForkTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    @Test("child and parent sign after fork")
    func signAfterFork() throws {
        let store = try environment.makeToken("fork")
        let identity = try store.importIdentity(environment.pfx("client-ec256.pfx"), exportable: false).identity
        let program = URL(fileURLWithPath: environment.binary).deletingLastPathComponent().appendingPathComponent(
            "tokentls-fork-check"
        ).path
        var variables = ProcessInfo.processInfo.environment
        variables["SOFTHSM2_CONF"] = environment.softHSMConfiguration.path
        variables["TOKENTLS_TOKEN"] = store.token.label
        variables["TOKENTLS_PIN"] = TestEnvironment.userPIN
        let result = try TestEnvironment.run(
            program,
            [
                "https://localhost:\(server.mtlsPort)/hello-world.txt", environment.certificate("server-ca.crt"),
                identity.thumbprint,
            ],
            environment: variables)
        let lines = result.standardOutput.split(separator: "\n").map(String.init)
        let fingerprint = identity.thumbprint.lowercased()
        #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
        #expect(lines.contains("parent-before status=200 verify=SUCCESS fingerprint=\(fingerprint) signatures=1"), "\(lines)")
        #expect(lines.contains("child status=200 verify=SUCCESS fingerprint=\(fingerprint) signatures=2"), "\(lines)")
        #expect(lines.contains("child-exit=0"))
        #expect(lines.contains("parent-after status=200 verify=SUCCESS fingerprint=\(fingerprint) signatures=2"), "\(lines)")
    }
}
