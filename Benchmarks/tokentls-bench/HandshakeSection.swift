import Foundation
import TokenTLS

/// Counts the calls of an operation.
final class CallCounter: @unchecked Sendable {
    private(set) var count = 0

    /// Runs `operation` and counts the call. One thread at a time.
    func run(_ operation: () throws -> Void) rethrows {
        try operation()
        count += 1
    }
}

/// Section 2: full mutual-TLS handshakes, resumed handshakes and kept-alive requests,
/// with the key file, the key in memory and the token key.
func runHandshakeSection(_ bench: Bench) throws {
    let report = bench.report
    report.beginSection("2. Handshakes and requests, one thread, TLS 1.3")

    progress("  full handshakes")
    let fileRSA = try bench.curlClient(bench.rsa, .file, policy: .fullHandshake)
    let memoryRSA = try bench.curlClient(bench.rsa, .memory, policy: .fullHandshake)
    let tokenRSA = try bench.curlClient(bench.rsa, .token, policy: .fullHandshake)
    let memoryEC = try bench.curlClient(bench.ec, .memory, policy: .fullHandshake)
    let tokenEC = try bench.curlClient(bench.ec, .token, policy: .fullHandshake)
    let httpClient = HTTPClient(identity: bench.rsa.identity)
    let httpRequests = CallCounter()
    let request = bench.mtlsRequest
    let signaturesBefore = bench.rsa.identity.signatureCount
    let full = try compare(
        [
            Contender(name: "file") { try measureRate(seconds: $0, fileRSA.get) },
            Contender(name: "memory") { try measureRate(seconds: $0, memoryRSA.get) },
            Contender(name: "token") { try measureRate(seconds: $0, tokenRSA.get) },
            Contender(name: "http") {
                try measureRate(seconds: $0) { try httpRequests.run { try performChecked(httpClient, request) } }
            },
            Contender(name: "memoryEC") { try measureRate(seconds: $0, memoryEC.get) },
            Contender(name: "tokenEC") { try measureRate(seconds: $0, tokenEC.get) },
        ], bench.networkSchedule)
    let fullSignatures = bench.rsa.identity.signatureCount - signaturesBefore
    let fullConnections = tokenRSA.connectionsOpened + httpRequests.count
    report.add("RSA-2048 full handshakes: key file, libcurl", unit: "handshakes/s", full.summary("file"))
    report.add("RSA-2048 full handshakes: key in memory, libcurl", unit: "handshakes/s", full.summary("memory"))
    report.add("RSA-2048 full handshakes: token, libcurl", unit: "handshakes/s", full.summary("token"))
    report.add("RSA-2048 full handshakes: token, HTTPClient.perform", unit: "handshakes/s", full.summary("http"))
    report.addRatio("RSA-2048 full handshakes: token ÷ key file", full.ratio("token", over: "file"))
    report.addRatio("RSA-2048 full handshakes: token ÷ key in memory", full.ratio("token", over: "memory"))
    report.addRatio("RSA-2048 full handshakes: HTTPClient ÷ libcurl, both token", full.ratio("http", over: "token"))
    report.add("P-256 full handshakes: key in memory, libcurl", unit: "handshakes/s", full.summary("memoryEC"))
    report.add("P-256 full handshakes: token, libcurl", unit: "handshakes/s", full.summary("tokenEC"))
    report.addRatio("P-256 full handshakes: token ÷ key in memory", full.ratio("tokenEC", over: "memoryEC"))

    progress("  resumed handshakes")
    let resumingServer = try bench.environment.startServer(name: "nginx-resumption", sessionResumption: true)
    let fileResumed = try bench.curlClient(bench.rsa, .file, policy: .resumption, server: resumingServer)
    let memoryResumed = try bench.curlClient(bench.rsa, .memory, policy: .resumption, server: resumingServer)
    let tokenResumed = try bench.curlClient(bench.rsa, .token, policy: .resumption, server: resumingServer)
    let resumedSignaturesBefore = bench.rsa.identity.signatureCount
    let resumed = try compare(
        [
            Contender(name: "file") { try measureRate(seconds: $0, fileResumed.get) },
            Contender(name: "memory") { try measureRate(seconds: $0, memoryResumed.get) },
            Contender(name: "token") { try measureRate(seconds: $0, tokenResumed.get) },
        ], bench.networkSchedule)
    let resumedSignatures = bench.rsa.identity.signatureCount - resumedSignaturesBefore
    report.add("RSA-2048 resumed handshakes: key file, libcurl", unit: "handshakes/s", resumed.summary("file"))
    report.add("RSA-2048 resumed handshakes: key in memory, libcurl", unit: "handshakes/s", resumed.summary("memory"))
    report.add("RSA-2048 resumed handshakes: token, libcurl", unit: "handshakes/s", resumed.summary("token"))
    report.addRatio("RSA-2048 resumed handshakes: token ÷ key file", resumed.ratio("token", over: "file"))
    report.addRatio("RSA-2048 resumed handshakes: token ÷ key in memory", resumed.ratio("token", over: "memory"))

    progress("  kept-alive requests")
    let fileKept = try bench.curlClient(bench.rsa, .file, policy: .keepAlive)
    let tokenKept = try bench.curlClient(bench.rsa, .token, policy: .keepAlive)
    let kept = try compare(
        [
            Contender(name: "file") { try measureRate(seconds: $0, fileKept.get) },
            Contender(name: "token") { try measureRate(seconds: $0, tokenKept.get) },
        ], bench.networkSchedule)
    report.add("requests on one kept-alive connection: key file", unit: "requests/s", kept.summary("file"))
    report.add("requests on one kept-alive connection: token", unit: "requests/s", kept.summary("token"))
    report.addRatio("requests on one kept-alive connection: token ÷ key file", kept.ratio("token", over: "file"))

    report.note(
        "Checks: the token made \(fullSignatures) RSA signatures for \(fullConnections) full-handshake connections "
            + "(libcurl and HTTPClient), and \(resumedSignatures) for \(tokenResumed.connectionsOpened) connections with "
            + "resumption. The kept-alive clients opened \(fileKept.connectionsOpened) and \(tokenKept.connectionsOpened) "
            + "connections for \(fileKept.requests) and \(tokenKept.requests) requests.")
    report.endSection()
}

/// Section 3, second part: full handshakes per second on 1, 2 and 4 threads, each
/// thread with its own libcurl handle. The token threads share one `ClientIdentity`.
func runHandshakeConcurrency(_ bench: Bench, threadCounts: [Int]) throws {
    var contenders: [Contender] = []
    for threads in threadCounts {
        let memory = try (0..<threads).map { _ in try bench.curlClient(bench.rsa, .memory, policy: .fullHandshake) }
        let tokens = try (0..<threads).map { _ in try bench.curlClient(bench.rsa, .token, policy: .fullHandshake) }
        let memoryOperations: [@Sendable () throws -> Void] = memory.map { client in { try client.get() } }
        let tokenOperations: [@Sendable () throws -> Void] = tokens.map { client in { try client.get() } }
        contenders.append(Contender(name: "memory\(threads)") { try measureParallelRate(seconds: $0, memoryOperations) })
        contenders.append(Contender(name: "token\(threads)") { try measureParallelRate(seconds: $0, tokenOperations) })
    }
    let result = try compare(contenders, bench.networkSchedule)
    let report = bench.report
    let first = threadCounts[0]
    for threads in threadCounts {
        let label = "RSA-2048 full handshakes, \(threads) thread\(threads == 1 ? "" : "s")"
        report.add("\(label): key in memory", unit: "handshakes/s", result.summary("memory\(threads)"))
        report.add("\(label): token", unit: "handshakes/s", result.summary("token\(threads)"))
        report.addRatio("\(label): token ÷ key in memory", result.ratio("token\(threads)", over: "memory\(threads)"))
        if threads != first {
            report.addRatio("\(label): token ÷ token on \(first) thread", result.ratio("token\(threads)", over: "token\(first)"))
        }
    }
}

/// Section 5: resident size while one `HTTPClient` makes full handshakes with the token key.
func runMemorySection(_ bench: Bench) throws {
    let report = bench.report
    report.beginSection("5. Memory, HTTPClient with the token key, full handshakes")

    let checkpoints = bench.options.quick ? [100, 1000] : [100, 1000, 10_000]
    let client = HTTPClient(identity: bench.rsa.identity)
    let request = bench.mtlsRequest
    let signaturesBefore = bench.rsa.identity.signatureCount
    let start = monotonicSeconds()

    var done = 0
    var baseline = 0
    for checkpoint in checkpoints {
        while done < checkpoint {
            try performChecked(client, request)
            done += 1
        }

        let resident = residentKiB()
        if checkpoint == checkpoints[0] {
            baseline = resident
        }
        progress("  \(done) handshakes: VmRSS \(resident) KiB")
        report.add("VmRSS after \(checkpoint) handshakes", unit: "MiB", value: Double(resident) / 1024, digits: 1)
        if checkpoint != checkpoints[0] {
            report.add(
                "growth from \(checkpoints[0]) to \(checkpoint) handshakes, per handshake", unit: "bytes",
                value: Double(resident - baseline) * 1024 / Double(checkpoint - checkpoints[0]), digits: 0)
        }
    }

    let elapsed = monotonicSeconds() - start
    report.add("average rate over the whole run", unit: "handshakes/s", value: Double(done) / elapsed)
    report.note(
        "The token made \(bench.rsa.identity.signatureCount - signaturesBefore) signatures for these \(done) requests. "
            + "The process had already run the sections before this one.")
    report.endSection()
}
