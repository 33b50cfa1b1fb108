// Signs TLS handshakes with a token key before and after fork(), in the parent and
// in the child, for the fork test in TokenTLSTests.
//
// Usage: tokentls-fork-check URL CA-FILE THUMBPRINT
// Environment: SOFTHSM2_CONF, TOKENTLS_TOKEN (label), TOKENTLS_PIN.
// Prints one line per request: "NAME status=N verify=V fingerprint=F signatures=N".
import CShims
import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// Writes a line to standard output without buffering, so nothing is duplicated by fork().
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let label = ProcessInfo.processInfo.environment["TOKENTLS_TOKEN"],
    let pin = ProcessInfo.processInfo.environment["TOKENTLS_PIN"]
else {
    FileHandle.standardError.write(
        Data("usage: tokentls-fork-check URL CA-FILE THUMBPRINT (with TOKENTLS_TOKEN and TOKENTLS_PIN set)\n".utf8))
    exit(2)
}

func request(_ name: String, _ client: HTTPClient) -> Bool {
    var request = HTTPRequest(url: arguments[1])
    request.caFile = arguments[2]
    do {
        let response = try client.perform(request)
        let signatures = client.identity?.signatureCount ?? -1
        say(
            "\(name) status=\(response.status) verify=\(response.header("X-Client-Verify") ?? "-") "
                + "fingerprint=\(response.header("X-Client-Fingerprint") ?? "-") signatures=\(signatures)")
        return response.status == 200
    } catch {
        say("\(name) error=\(error)")
        return false
    }
}

do {
    let module = try Module.load(path: Module.defaultPath)
    let store = try TokenStore(token: try module.findToken(TokenSelector(label: label)), pin: SecretBytes(utf8: pin))
    let client = HTTPClient(identity: try ClientIdentity(store: store, identity: try store.identity(thumbprint: arguments[3])))
    var ok = request("parent-before", client)
    let child = tokentls_fork()
    if child == 0 {
        let childOK = request("child", client)
        Module.finalizeAll()
        exit(childOK ? 0 : 1)
    }
    var status: Int32 = 0
    waitpid(child, &status, 0)
    say("child-exit=\((status >> 8) & 0xff)")
    ok = request("parent-after", client) && ok
    Module.finalizeAll()
    exit(ok ? 0 : 1)
} catch {
    say("setup error=\(error)")
    exit(1)
}
