import CShims
import Foundation
import PKCS11
import TestSupport
import Testing
import TokenStore

/// After an import, the process contains no copy of the private key: the test scans its
/// own readable memory for the key's secret numbers.
@Suite("Key material in memory")
struct MemoryScanTests {
    let environment = TestEnvironment.shared

    @Test("freed OpenSSL memory is cleared")
    func clearingAllocator() {
        #expect(tokentls_clearing_allocator_installed() == 1)
    }

    @Test("no key bytes after import", arguments: ["rsa", "ec"])
    func noKeyAfterImport(_ algorithm: String) throws {
        // A key made for this test only, so no other test handles the same numbers.
        let folder = environment.root.appendingPathComponent("memory-\(algorithm)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let keyOption = algorithm == "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        let made = try TestEnvironment.run(
            "/usr/bin/openssl",
            ["req", "-x509"] + keyOption + [
                "-nodes", "-keyout", folder + "/key.pem", "-out", folder + "/cert.pem", "-subj", "/CN=TokenTLS memory scan",
                "-days", "2",
            ])
        #expect(made.status == 0, "\(made.standardError)")
        let exported = try TestEnvironment.run(
            "/usr/bin/openssl",
            [
                "pkcs12", "-export", "-inkey", folder + "/key.pem", "-in", folder + "/cert.pem", "-out", folder + "/id.pfx",
                "-passout", "pass:",
            ])
        #expect(exported.status == 0, "\(exported.standardError)")

        var maskBytes = [UInt8](repeating: 0, count: 32)
        for index in maskBytes.indices { maskBytes[index] = UInt8.random(in: 1...255) }
        let script = environment.packageRoot.appendingPathComponent("Tests/Scripts/masked-key-needles.py").path
        let needlesRun = try TestEnvironment.run("/usr/bin/env", ["python3", script, folder + "/key.pem", hexString(maskBytes)])
        #expect(needlesRun.status == 0, "\(needlesRun.standardError)")
        let needles = needlesRun.standardOutput.split(separator: "\n").compactMap { bytes(fromHex: String($0)) }
        #expect(needles.count == (algorithm == "rsa" ? 6 : 2))
        unlink(folder + "/key.pem")

        let store = try environment.makeToken("memory")
        let pfx = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/id.pfx")))
        let contents = try PFX.decode(pfx, password: nil, source: "id.pfx")
        _ = try store.importIdentity(contents, exportable: false)

        // The scan itself must be able to find a needle: plant one masked copy and look for it.
        let planted = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 1)
        defer { planted.deallocate() }
        for index in 0..<32 { planted[index] = needles[0][index] ^ maskBytes[index] }
        #expect(try MemoryScanner.count(masked: needles[0], mask: maskBytes) >= 1)
        SecretBytes.clear(planted)

        for (index, needle) in needles.enumerated() {
            #expect(try MemoryScanner.count(masked: needle, mask: maskBytes) == 0, "needle \(index) found in memory")
        }
    }
}

/// Counts occurrences of a masked byte string in this process's readable memory,
/// unmasking one byte at a time so the plain string is never assembled.
enum MemoryScanner {
    static func count(masked: [UInt8], mask: [UInt8]) throws -> Int {
        let maps = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
        let memory = open("/proc/self/mem", O_RDONLY)
        guard memory >= 0 else { throw TestFailure("cannot open /proc/self/mem") }
        defer { close(memory) }
        let chunkSize = 1 << 20
        let overlap = masked.count - 1
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize + overlap, alignment: 16)
        defer {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            buffer.deallocate()
        }
        let first = masked[0] ^ mask[0]
        var hits = 0
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].hasPrefix("r") else { continue }
            if line.hasSuffix("[vvar]") || line.hasSuffix("[vsyscall]") { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16) else { continue }
            var offset = start
            while offset < end {
                let length = Int(min(UInt(chunkSize + overlap), end - offset))
                let read = pread(memory, buffer.baseAddress, length, off_t(Int64(bitPattern: UInt64(offset))))
                if read <= 0 { break }
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<read])
                let base = bytes.baseAddress!
                var position = 0
                while position + masked.count <= bytes.count,
                    let found = memchr(base + position, Int32(first), bytes.count - masked.count + 1 - position)
                {
                    position = base.distance(to: UnsafeRawPointer(found))
                    var index = 1
                    while index < masked.count, bytes[position + index] == masked[index] ^ mask[index] {
                        index += 1
                    }
                    if index == masked.count {
                        hits += 1
                    }
                    position += 1
                }
                offset += UInt(chunkSize)
            }
        }
        return hits
    }
}
