import CShims
import Foundation
import PKCS11

// Measures TokenTLS: signing, handshakes, concurrency, token size and memory.
// scripts/bench builds this program in release mode and runs it, and
// docs/benchmarks.md explains the output.

let options: Options
do {
    options = try Options.parse(Array(CommandLine.arguments.dropFirst()))
} catch {
    progress("tokentls-bench: \(error)")
    exit(2)
}
guard curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK else {
    progress("tokentls-bench: curl_global_init failed")
    exit(1)
}

let scriptsFolder =
    options.scriptsFolder
    ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("scripts").path

let environment: BenchEnvironment
do {
    environment = try BenchEnvironment(workFolder: options.workFolder, scriptsFolder: scriptsFolder)
} catch {
    progress("tokentls-bench: setup failed: \(error)")
    exit(1)
}

var status: Int32 = 0
do {
    let bench = try Bench(options: options, environment: environment)
    if let profile = options.profile.flatMap(ProfileOperation.init(rawValue:)) {
        try runProfile(profile, bench: bench, count: options.profileCount, identities: options.profileIdentities)
    } else {
        try runAll(bench)
    }
} catch {
    progress("tokentls-bench: \(error)")
    status = 1
}
environment.cleanUp()
exit(status)

/// Prints the header and runs the selected sections.
func runAll(_ bench: Bench) throws {
    let options = bench.options
    let started = Date()
    let threadCounts = [1, 2, 4]
    print("## TokenTLS benchmark")
    print("")
    print("- started: \(ISO8601DateFormatter().string(from: started))")
    print("- options: \(options.measurementOptions)")
    print(
        "- rounds per comparison: \(bench.signingSchedule.rounds); each contender runs "
            + String(
                format: "%.2f s (signing) or %.2f s (network) per round", bench.signingSchedule.seconds,
                bench.networkSchedule.seconds))
    if let revision = options.revision {
        print("- revision: \(revision)")
    }
    print("- load average at start: \(loadAverage())")
    for line in bench.environment.machineDescription() {
        print(line)
    }
    fflush(nil)

    if options.sections.contains("signing") {
        try runSigningSection(bench)
    }
    if options.sections.contains("handshakes") {
        try runHandshakeSection(bench)
    }
    if options.sections.contains("concurrency") {
        bench.report.beginSection("3. Concurrency: 1, 2 and 4 client threads")
        progress("  signing")
        try runSigningConcurrency(bench, threadCounts: threadCounts)
        progress("  handshakes")
        try runHandshakeConcurrency(bench, threadCounts: threadCounts)
        bench.report.note(
            "Signing threads share one ClientIdentity, so (c) borrows sessions from one pool of at most 8; nginx runs one "
                + "worker process on the same \(ProcessInfo.processInfo.activeProcessorCount) processors as the client.")
        bench.report.endSection()
    }
    if options.sections.contains("scale") {
        try runScaleSection(bench)
    }
    if options.sections.contains("memory") {
        try runMemorySection(bench)
    }
    print("")
    print(String(format: "Finished in %.0f s; load average at the end: %@", Date().timeIntervalSince(started), loadAverage()))
}
