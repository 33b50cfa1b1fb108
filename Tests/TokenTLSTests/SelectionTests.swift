import Foundation
import PKCS11
import Synchronization
import TestSupport
import Testing
import TokenStore
import TokenTLS

/// Automatic client-certificate selection against nginx servers that list one client CA.
@Suite("Automatic selection")
struct SelectionTests {
    let environment = TestEnvironment.shared
    let server = TestServer.shared

    /// A token with identities that each fail one rule, plus the one that should win.
    private func crowdedToken() throws -> (TokenStore, [String: Identity]) {
        let store = try environment.makeToken("select")
        var identities: [String: Identity] = [:]
        for name in [
            "client-selected", "client-ec256", "client-other", "client-expired", "client-future", "client-serverauth",
        ] {
            identities[name] = try store.importIdentity(environment.pfx(name + ".pfx"), exportable: false).identity
        }
        return (store, identities)
    }

    private func request(_ port: Int) -> HTTPRequest {
        var request = HTTPRequest(url: "https://localhost:\(port)/hello-world.txt")
        request.caFile = environment.certificate("server-ca.crt")
        return request
    }

    @Test("right identity for the listed CA", arguments: [\TestServer.mtls13Port, \TestServer.mtls12Port])
    func choosesListedCA(_ port: KeyPath<TestServer, Int> & Sendable) throws {
        let (store, identities) = try crowdedToken()
        let selection = AutomaticSelection { store }
        let client = HTTPClient(selection: selection)

        let response = try client.perform(request(server[keyPath: port]))

        let expected = try #require(identities["client-selected"])
        #expect(response.header("X-Client-Verify") == "SUCCESS")
        #expect(response.header("X-Client-Fingerprint") == expected.thumbprint.lowercased())
        #expect(client.lastSelectedIdentity?.signatureCount == 1)
        let report = selection.report.joined(separator: "\n")
        #expect(report.contains("chose \(expected.thumbprint)"))
        #expect(report.contains("\(identities["client-expired"]!.thumbprint) (CN=TokenTLS Test Client): expired on"))
        #expect(report.contains("\(identities["client-future"]!.thumbprint) (CN=TokenTLS Test Client Future): not valid before"))
        #expect(
            report.contains(
                "\(identities["client-serverauth"]!.thumbprint) (CN=TokenTLS Test Client ServerAuth): its extended key usage"))
        #expect(
            report.contains(
                "\(identities["client-other"]!.thumbprint) (CN=TokenTLS Test Client Other CA): issued under CN=TokenTLS Other Client CA, which the server does not list"
            ))
        #expect(
            report.contains("\(identities["client-ec256"]!.thumbprint) (CN=TokenTLS Test Client EC P-256): it expires earlier"))
    }

    @Test("other CA picks the other identity")
    func choosesOtherCA() throws {
        let (store, identities) = try crowdedToken()
        let client = HTTPClient(selection: AutomaticSelection { store })
        let response = try client.perform(request(server.mtlsOtherPort))
        #expect(response.header("X-Client-Verify") == "SUCCESS")
        #expect(response.header("X-Client-Fingerprint") == identities["client-other"]?.thumbprint.lowercased())
    }

    @Test("identity under an intermediate CA")
    func intermediate() throws {
        let store = try environment.makeToken("select-chain")
        let identity = try store.importIdentity(environment.pfx("client-chain.pfx"), exportable: false).identity
        let selection = AutomaticSelection { store }
        let client = HTTPClient(selection: selection)
        // nginx lists only the root client CA; the chain reaches it through the
        // intermediate CA certificate stored with the identity.
        let response = try client.perform(request(server.mtlsPort))
        #expect(response.header("X-Client-Verify") == "SUCCESS")
        #expect(response.header("X-Client-Fingerprint") == identity.thumbprint.lowercased())
    }

    @Test("nothing fits: no certificate sent")
    func nothingFits() throws {
        let store = try environment.makeToken("select-none")
        _ = try store.importIdentity(environment.pfx("client-other.pfx"), exportable: false)
        _ = try store.importIdentity(environment.pfx("client-expired.pfx"), exportable: false)
        let selection = AutomaticSelection { store }
        let client = HTTPClient(selection: selection)
        let response = try client.perform(request(server.mtlsPort))
        #expect(response.status == 400)
        #expect(response.header("X-Client-Verify") == "NONE")
        #expect(client.lastSelectedIdentity == nil)
        #expect(selection.report.last == "no identity in the token fits this server, so no client certificate is sent")
    }

    @Test("nothing fits, no token login")
    func nothingFitsWithoutLogin() throws {
        let store = try environment.makeToken("select-nologin")
        _ = try store.importIdentity(environment.pfx("client-other.pfx"), exportable: false)
        let opened = Mutex(false)
        let selection = AutomaticSelection(token: store.token) {
            opened.withLock { $0 = true }
            return store
        }
        let response = try HTTPClient(selection: selection).perform(request(server.mtlsPort))
        #expect(response.status == 400)
        #expect(opened.withLock { $0 } == false)
        #expect(selection.report.contains { $0.contains("which the server does not list") })
        #expect(selection.report.last?.contains("no login was needed") == true)
    }

    @Test("no request, no token login")
    func tlsOnlyServer() throws {
        let opened = Mutex(false)
        let store = try environment.makeToken("select-lazy")
        let selection = AutomaticSelection {
            opened.withLock { $0 = true }
            return store
        }
        let response = try HTTPClient(selection: selection).perform(request(server.tlsPort))
        #expect(response.status == 200)
        #expect(opened.withLock { $0 } == false)
    }
}
