import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// One operation repeated a fixed number of times without timing, for
/// `valgrind --tool=callgrind`. Instruction counts of two runs with different
/// `--count` values differ by the cost of the extra operations alone.
enum ProfileOperation: String, CaseIterable {
    case signMemoryPSS = "sign-memory-pss"
    case signRawPSS = "sign-raw-pss"
    case signBridgePSS = "sign-bridge-pss"
    case signMemoryECDSA = "sign-memory-ecdsa"
    case signRawECDSA = "sign-raw-ecdsa"
    case signBridgeECDSA = "sign-bridge-ecdsa"
    case handshakeMemory = "handshake-memory"
    case handshakeToken = "handshake-token"
    case httpClient = "http-client"
    /// `TokenStore.identities()` on a token with `--identities` identities.
    case list
    /// Requests through `HTTPClient` with automatic selection among `--identities` identities.
    case selection
}

func runProfile(_ operation: ProfileOperation, bench: Bench, count: Int, identities: Int) throws {
    progress("profiling \(operation.rawValue), \(count) times")
    switch operation {
    case .signMemoryPSS, .signRawPSS, .signBridgePSS, .signMemoryECDSA, .signRawECDSA, .signBridgeECDSA:
        let scheme: SignatureScheme = operation.rawValue.hasSuffix("ecdsa") ? .ecdsa : .rsaPSS
        let signers = try SignerSet(bench, scheme: scheme)
        let sign: () throws -> Void =
            switch operation {
            case .signMemoryPSS, .signMemoryECDSA: signers.memory.sign
            case .signRawPSS, .signRawECDSA: signers.raw.sign
            default: signers.bridge.sign
            }
        for _ in 0..<count {
            try sign()
        }
    case .handshakeMemory, .handshakeToken:
        let client = try bench.curlClient(bench.rsa, operation == .handshakeToken ? .token : .memory, policy: .fullHandshake)
        for _ in 0..<count {
            try client.get()
        }
    case .httpClient:
        let client = HTTPClient(identity: bench.rsa.identity)
        for _ in 0..<count {
            try performChecked(client, bench.mtlsRequest)
        }
    case .list, .selection:
        let store = try bench.environment.makeToken(label: "profile")
        let factory = try IdentityFactory(
            authorityKey: bench.environment.certificate("client-ca.key"),
            authorityCertificate: bench.environment.certificate("client-ca.crt"))
        let password = SecretBytes(utf8: factory.password)
        for index in 0..<identities {
            let contents = try PFX.decode(try factory.makePFX(index: index), password: password, source: "identity \(index)")
            _ = try store.importIdentity(contents, exportable: false)
        }
        progress("imported \(identities) identities")
        if operation == .list {
            for _ in 0..<count {
                _ = try store.identities()
            }
        } else {
            let client = HTTPClient(selection: AutomaticSelection { store })
            for _ in 0..<count {
                try performChecked(client, bench.mtlsRequest)
            }
        }
    }
    progress("done")
}
