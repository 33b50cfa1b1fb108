import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

/// An import killed with SIGKILL between two token writes, and processes that use one
/// token at the same time.
@Suite("Crash consistency")
struct CrashConsistencyTests {
    let environment = TestEnvironment.shared

    struct Step: Sendable, CustomStringConvertible {
        let name: String
        /// Key objects left without a certificate when the import dies after this step.
        let leftovers: Int
        var description: String { name }
    }

    static let steps = [
        Step(name: "private-key", leftovers: 1),
        Step(name: "public-key", leftovers: 2),
        Step(name: "certificate", leftovers: 0),
        Step(name: "CA-certificate", leftovers: 0),
    ]

    @Test("import killed at each step", arguments: steps)
    func killedImport(_ step: Step) throws {
        let token = try environment.makeToken("crash").token
        let pauseFolder = environment.root.appendingPathComponent("pause-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: pauseFolder, withIntermediateDirectories: true)
        let pfx = environment.certificate("client-chain.pfx")
        let running = try environment.spawnTokentls(
            ["import-pfx", pfx], token: token.label, environment: ["TOKENTLS_TEST_IMPORT_PAUSE": pauseFolder])

        // Let the import pass every earlier step, then kill it while it waits at this one.
        let marker = pauseFolder + "/" + step.name
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: marker) {
            #expect(Date() < deadline, "the import never reached \(step.name)")
            if Date() >= deadline { break }
            for other in (try? FileManager.default.contentsOfDirectory(atPath: pauseFolder)) ?? [] where other != step.name {
                try? FileManager.default.removeItem(atPath: pauseFolder + "/" + other)
            }
            usleep(5_000)
        }
        let killed = running.kill()
        #expect(killed.terminatedBySignal)

        let listed = try environment.tokentls(["list"], token: token.label)
        #expect(listed.status == 0, "\(listed.standardError)")
        let warnings = listed.standardError.split(separator: "\n").filter { $0.contains("has no certificate") }
        #expect(warnings.count == step.leftovers, "\(listed.standardError)")
        let thumbprint = try opensslFingerprint(environment.certificate("client-chain.crt"))
        let complete = listed.standardOutput.split(separator: "\n").contains {
            $0.hasPrefix(thumbprint) && $0.contains("RSA 2048")
        }
        #expect(complete == (step.leftovers == 0), "\(listed.standardOutput)")

        let dryRun = try environment.tokentls(["repair"], token: token.label)
        #expect(dryRun.status == 0)
        if step.leftovers > 0 {
            #expect(dryRun.standardOutput.contains("Run 'tokentls repair --yes' to remove them"))
            let repaired = try environment.tokentls(["repair", "--yes"], token: token.label)
            #expect(repaired.standardOutput.contains("Removed \(step.leftovers) key object(s)"), "\(repaired.standardOutput)")
        }
        let after = try environment.tokentls(["repair"], token: token.label)
        #expect(after.standardOutput.contains("is consistent"), "\(after.standardOutput)")

        // The import can simply be run again.
        let again = try environment.tokentls(["import-pfx", pfx], token: token.label)
        #expect(again.status == 0, "\(again.standardError)")
        let final = try environment.tokentls(["list"], token: token.label)
        #expect(final.standardOutput.split(separator: "\n").contains { $0.hasPrefix(thumbprint) && $0.contains("RSA 2048") })
        #expect(final.standardError.isEmpty)
    }

    @Test("two imports and a request at once")
    func concurrentProcesses() throws {
        let server = TestServer.shared
        let store = try environment.makeToken("processes")
        let identity = try store.importIdentity(environment.pfx("client.pfx"), exportable: false).identity
        let label = store.token.label

        let first = try environment.spawnTokentls(["import-pfx", environment.certificate("client-ec256.pfx")], token: label)
        let second = try environment.spawnTokentls(["import-pfx", environment.certificate("client-ec384.pfx")], token: label)
        let request = try environment.spawnTokentls(
            [
                "request", "https://localhost:\(server.mtlsPort)/hello-world.txt", "--cacert",
                environment.certificate("server-ca.crt"),
                "--thumbprint", identity.thumbprint, "-i",
            ], token: label)

        let results = [first.wait(), second.wait(), request.wait()]
        for result in results {
            #expect(result.status == 0, "\(result.standardError)")
        }
        #expect(results[2].standardOutput.contains("X-Client-Verify: SUCCESS"))

        let listed = try environment.tokentls(["list"], token: label)
        for certificate in ["client.crt", "client-ec256.crt", "client-ec384.crt"] {
            let thumbprint = try opensslFingerprint(environment.certificate(certificate))
            #expect(listed.standardOutput.split(separator: "\n").contains { $0.hasPrefix(thumbprint) && !$0.contains("no key") })
        }
        #expect(listed.standardError.isEmpty, "\(listed.standardError)")
    }
}
