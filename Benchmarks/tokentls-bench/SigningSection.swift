import Foundation
import PKCS11
import TokenTLS

/// The three ways to make the same signature that sections 1 and 3 compare.
struct SignerSet {
    /// (a) OpenSSL with the key in memory.
    let memory: EVPSigner
    /// (b) `C_SignInit`/`C_Sign` on a session of its own.
    let raw: RawTokenSigner
    /// (c) OpenSSL with the token-backed key of a `ClientIdentity`, through the provider.
    let bridge: EVPSigner

    init(_ bench: Bench, scheme: SignatureScheme) throws {
        let identity = scheme.isRSA ? bench.rsa : bench.ec
        memory = EVPSigner(key: identity.memoryKey, scheme: scheme)
        raw = RawTokenSigner(session: try bench.store.token.openSession(), key: identity.keyObject, scheme: scheme)
        bridge = identity.identity.withPrivateKey { EVPSigner(key: $0, scheme: scheme) }
    }

    /// Signs once each way and checks the OpenSSL signatures against the certificate.
    func check(_ identity: BenchIdentity) throws {
        let before = identity.identity.signatureCount
        try memory.sign()
        try raw.sign()
        try bridge.sign()
        guard memory.verifyLastSignature(publicKey: identity.publicKey),
            bridge.verifyLastSignature(publicKey: identity.publicKey)
        else {
            throw BenchFailure("a \(memory.scheme.title) signature does not verify with the certificate's public key")
        }
        guard identity.identity.signatureCount == before + 1 else {
            throw BenchFailure("the bridge signature of \(memory.scheme.title) did not reach the token")
        }
    }
}

/// Section 1: signatures per second of each scheme, (a), (b) and (c) interleaved.
func runSigningSection(_ bench: Bench) throws {
    let report = bench.report
    report.beginSection("1. Signing, one thread")
    for scheme in SignatureScheme.allCases {
        progress("  \(scheme.title)")
        let signers = try SignerSet(bench, scheme: scheme)
        try signers.check(scheme.isRSA ? bench.rsa : bench.ec)
        let result = try compare(
            [
                Contender(name: "a") { try measureRate(seconds: $0, signers.memory.sign) },
                Contender(name: "b") { try measureRate(seconds: $0, signers.raw.sign) },
                Contender(name: "c") { try measureRate(seconds: $0, signers.bridge.sign) },
            ], bench.signingSchedule)
        report.add("\(scheme.title): (a) OpenSSL, key in memory", unit: "signatures/s", result.summary("a"))
        report.add("\(scheme.title): (b) raw C_Sign on SoftHSM", unit: "signatures/s", result.summary("b"))
        report.add("\(scheme.title): (c) provider bridge", unit: "signatures/s", result.summary("c"))
        report.addRatio("\(scheme.title): b/a, token ÷ memory", result.ratio("b", over: "a"))
        report.addRatio("\(scheme.title): c/b, bridge ÷ raw C_Sign", result.ratio("c", over: "b"))
    }
    report.note(
        "(a) and (c) call EVP_DigestSignInit_ex and EVP_DigestSign on a \(signedMessage.count)-byte message, as libssl "
            + "signs a CertificateVerify; (b) calls C_SignInit and C_Sign on its SHA-256 digest through PKCS11.Session.sign.")
    report.endSection()
}

/// Section 3, first part: RSA-2048 PSS signatures per second on 1, 2 and 4 threads.
/// The (c) threads share one `ClientIdentity` and so one session pool, and each (b)
/// thread has a session of its own.
func runSigningConcurrency(_ bench: Bench, threadCounts: [Int]) throws {
    var contenders: [Contender] = []
    for threads in threadCounts {
        let sets = try (0..<threads).map { _ in try SignerSet(bench, scheme: .rsaPSS) }
        let memory: [@Sendable () throws -> Void] = sets.map { set in { try set.memory.sign() } }
        let raw: [@Sendable () throws -> Void] = sets.map { set in { try set.raw.sign() } }
        let bridge: [@Sendable () throws -> Void] = sets.map { set in { try set.bridge.sign() } }
        contenders.append(Contender(name: "a\(threads)") { try measureParallelRate(seconds: $0, memory) })
        contenders.append(Contender(name: "b\(threads)") { try measureParallelRate(seconds: $0, raw) })
        contenders.append(Contender(name: "c\(threads)") { try measureParallelRate(seconds: $0, bridge) })
    }
    let result = try compare(contenders, bench.signingSchedule)
    let report = bench.report
    let first = threadCounts[0]
    for threads in threadCounts {
        let label = "RSA-2048 PSS signing, \(threads) thread\(threads == 1 ? "" : "s")"
        report.add("\(label): (a) key in memory", unit: "signatures/s", result.summary("a\(threads)"))
        report.add("\(label): (b) raw C_Sign", unit: "signatures/s", result.summary("b\(threads)"))
        report.add("\(label): (c) provider bridge", unit: "signatures/s", result.summary("c\(threads)"))
        report.addRatio("\(label): c/b", result.ratio("c\(threads)", over: "b\(threads)"))
        if threads != first {
            report.addRatio("\(label): (c) ÷ (c) on \(first) thread", result.ratio("c\(threads)", over: "c\(first)"))
        }
    }
}
