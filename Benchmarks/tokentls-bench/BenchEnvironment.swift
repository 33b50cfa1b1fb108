import COpenSSL
import CShims
import Foundation
import PKCS11
import TokenStore

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An nginx of `scripts/test-server` on 127.0.0.1, run from its own folder.
struct NginxServer {
    let folder: String
    let tlsPort: Int
    let mtlsPort: Int

    /// The URL on the mTLS port where the test server returns "mTLS Hello World!".
    var mtlsURL: String { "https://127.0.0.1:\(mtlsPort)/hello-world.txt" }
}

/// Everything the benchmark sets up and removes again: a work folder with the
/// certificates of `scripts/make-certs`, a SoftHSM configuration whose tokens live
/// in that folder, and nginx servers started through `scripts/test-server`.
final class BenchEnvironment {
    static let userPIN = "bench-user-pin-1234"
    static let securityOfficerPIN = "bench-so-pin-5678"

    let workFolder: String
    let scriptsFolder: String
    let certificatesFolder: String
    let module: Module
    private var servers: [NginxServer] = []
    private let removesWorkFolder: Bool

    /// Creates the work folder (or uses `workFolder`, which must be empty or missing),
    /// writes the certificates and the SoftHSM configuration, and loads SoftHSM.
    init(workFolder requested: String?, scriptsFolder: String) throws {
        self.scriptsFolder = scriptsFolder
        let folder: String
        if let requested {
            try FileManager.default.createDirectory(atPath: requested, withIntermediateDirectories: true)
            folder = requested
            removesWorkFolder = false
        } else {
            var template = Array((NSTemporaryDirectory() + "/tokentls-bench-XXXXXX").utf8CString)
            guard let created = mkdtemp(&template) else {
                throw BenchFailure("creating a temporary folder failed: \(String(cString: strerror(errno)))")
            }
            folder = String(cString: created)
            removesWorkFolder = true
        }
        // scripts/test-server recognises its nginx by the canonical path of the run
        // folder, so every path below must be canonical too.
        guard let canonical = realpath(folder, nil) else {
            throw BenchFailure("cannot resolve the work folder \(folder): \(String(cString: strerror(errno)))")
        }
        workFolder = String(cString: canonical)
        free(canonical)
        certificatesFolder = workFolder + "/certs"
        let tokens = workFolder + "/tokens"
        try FileManager.default.createDirectory(atPath: tokens, withIntermediateDirectories: true)
        let configuration = workFolder + "/softhsm2.conf"
        try StoreLocation.softHSMConfiguration(tokenFolder: tokens).write(
            toFile: configuration, atomically: true, encoding: .utf8)
        // SoftHSM reads its configuration once, when the module is initialised.
        setenv("SOFTHSM2_CONF", configuration, 1)

        let result = try runProgram(scriptsFolder + "/make-certs", ["-q", certificatesFolder])
        guard result.status == 0 else {
            throw BenchFailure("scripts/make-certs failed with status \(result.status): \(result.standardError)")
        }
        module = try Module.load(path: Module.defaultPath)
    }

    /// Returns the path of a file written by `scripts/make-certs`.
    func certificate(_ name: String) -> String {
        certificatesFolder + "/" + name
    }

    /// Initialises a new token labelled `label` and returns a logged-in store on it.
    func makeToken(label: String) throws -> TokenStore {
        guard let free = try module.tokens().first(where: { !$0.isInitialized }) else {
            throw BenchFailure("SoftHSM offers no free slot for the token \(label)")
        }
        let token = try module.initializeToken(
            inSlot: free.slot, label: label, securityOfficerPIN: SecretBytes(utf8: BenchEnvironment.securityOfficerPIN),
            userPIN: SecretBytes(utf8: BenchEnvironment.userPIN))
        return try TokenStore(token: token, pin: SecretBytes(utf8: BenchEnvironment.userPIN))
    }

    /// Decodes a PFX written by `scripts/make-certs` (they use the empty password).
    func pfx(_ name: String) throws -> PFXContents {
        let data = try Data(contentsOf: URL(fileURLWithPath: certificate(name)))
        return try PFX.decode(Array(data), password: nil, source: name)
    }

    /// Starts the test server in `workFolder/name`.
    ///
    /// With `sessionResumption`, the server is the same except that it keeps a
    /// shared TLS session cache and issues session tickets. `scripts/test-server`
    /// turns both off, so its configuration is written by a start, changed, and
    /// started again with the command line the script uses, which lets
    /// `scripts/test-server stop` find and stop it.
    func startServer(name: String, sessionResumption: Bool = false) throws -> NginxServer {
        let ports = try freePorts(2)
        let server = NginxServer(folder: workFolder + "/" + name, tlsPort: ports[0], mtlsPort: ports[1])
        let arguments = [
            "start", "--certs", certificatesFolder, "--dir", server.folder, "--tls-port", "\(server.tlsPort)",
            "--mtls-port", "\(server.mtlsPort)",
        ]
        let started = try runProgram(scriptsFolder + "/test-server", arguments)
        guard started.status == 0 else {
            throw BenchFailure("scripts/test-server start failed: \(started.standardError)")
        }
        servers.append(server)
        if sessionResumption {
            try stop(server)
            try restartWithSessionResumption(server)
        }
        return server
    }

    private func restartWithSessionResumption(_ server: NginxServer) throws {
        let configurationPath = server.folder + "/nginx.conf"
        let original = try String(contentsOfFile: configurationPath, encoding: .utf8)
        let changed =
            original
            .replacingOccurrences(of: "ssl_session_cache off;", with: "ssl_session_cache shared:bench:1m;")
            .replacingOccurrences(of: "ssl_session_tickets off;", with: "ssl_session_tickets on;")
        guard changed != original, !changed.contains("ssl_session_cache off;") else {
            throw BenchFailure(
                "the configuration of scripts/test-server no longer has the session cache lines the benchmark changes")
        }
        try changed.write(toFile: configurationPath, atomically: true, encoding: .utf8)
        let errorLog = server.folder + "/error.log"
        let result = try runProgram("/usr/sbin/nginx", ["-p", server.folder + "/", "-c", configurationPath, "-e", errorLog])
        guard result.status == 0 else {
            throw BenchFailure("starting nginx with session resumption failed: \(result.standardError)")
        }
        servers.append(server)
        for _ in 0..<50 where !acceptsConnections(port: server.mtlsPort) {
            usleep(100_000)
        }
        guard acceptsConnections(port: server.mtlsPort) else {
            throw BenchFailure("nginx with session resumption does not accept connections on port \(server.mtlsPort)")
        }
    }

    private func stop(_ server: NginxServer) throws {
        let result = try runProgram(scriptsFolder + "/test-server", ["stop", "--dir", server.folder])
        guard result.status == 0 else {
            throw BenchFailure("scripts/test-server stop --dir \(server.folder) failed: \(result.standardError)")
        }
        servers.removeAll { $0.folder == server.folder }
        if acceptsConnections(port: server.mtlsPort) {
            progress("warning: port \(server.mtlsPort) still accepts connections after stopping the nginx in \(server.folder)")
        }
    }

    /// Stops the servers, finalises SoftHSM and removes the work folder if this
    /// program created it.
    func cleanUp() {
        for server in servers {
            do {
                try stop(server)
            } catch {
                progress("warning: \(error)")
            }
        }
        Module.finalizeAll()
        if removesWorkFolder {
            try? FileManager.default.removeItem(atPath: workFolder)
        }
    }

    // MARK: - The machine

    /// Lines describing the machine and the software versions of this run.
    func machineDescription() -> [String] {
        let cpu =
            (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n")
            .first { $0.hasPrefix("model name") }
            .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" }
            ?? "unknown"
        let softHSM = (try? module.info()).map { "\($0.description) \($0.version) (\($0.manufacturer))" } ?? "unknown"
        let openSSL = OpenSSL_version(Int32(OPENSSL_VERSION)).map { String(cString: $0) } ?? "unknown"
        let curl = curl_version().map { String(cString: $0) } ?? "unknown"
        let nginx = (try? runProgram("/usr/sbin/nginx", ["-v"]))?.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        var kernel = utsname()
        uname(&kernel)
        let release = withUnsafeBytes(of: kernel.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return [
            "- processors online (nproc): \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))",
            "- CPU: \(cpu)",
            "- memory: \(ProcessInfo.processInfo.physicalMemory / (1 << 20)) MiB",
            "- kernel: Linux \(release)",
            "- OpenSSL: \(openSSL)",
            "- SoftHSM: \(softHSM), file object store",
            "- libcurl: \(curl.split(separator: " ").first.map(String.init) ?? curl)",
            "- nginx: \(nginx ?? "unknown"), 1 worker process",
        ]
    }
}

/// Returns the 1, 5 and 15 minute load averages from /proc/loadavg.
func loadAverage() -> String {
    let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
    return text.split(separator: " ").prefix(3).joined(separator: " ")
}

/// Returns the resident set size of this process (VmRSS of /proc/self/status) in KiB.
func residentKiB() -> Int {
    let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
    return 0
}

struct ProgramResult {
    let status: Int32
    let standardOutput: String
    let standardError: String
}

/// Runs a program to completion, without a terminal, and collects its output.
///
/// Output goes through files rather than pipes, and the program is started with
/// `posix_spawn` rather than `Process`, because a daemon that the program starts
/// (nginx) keeps every inherited descriptor open after the program exits.
func runProgram(_ path: String, _ arguments: [String]) throws -> ProgramResult {
    let folder = NSTemporaryDirectory() + "/tokentls-bench-run-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let outputPath = folder + "/stdout"
    let errorPath = folder + "/stderr"

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

    let environmentLines = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    let envp = environmentLines.map { strdup($0) } + [nil]
    defer {
        for pointer in argv + envp {
            free(pointer)
        }
    }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, path, &actions, nil, argv, envp)
    guard spawned == 0 else {
        throw BenchFailure("starting \(path) failed: \(String(cString: strerror(spawned)))")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let signalled = (status & 0x7f) != 0
    return ProgramResult(
        status: signalled ? -1 : (status >> 8) & 0xff,
        standardOutput: (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "",
        standardError: (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "")
}

/// Ports on 127.0.0.1 that were free a moment ago, found by binding to port 0.
func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer {
        for descriptor in sockets {
            close(descriptor)
        }
    }
    var ports: [Int] = []
    for _ in 0..<count {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else {
            throw BenchFailure("socket() failed: \(String(cString: strerror(errno)))")
        }
        sockets.append(descriptor)
        var address = loopbackAddress(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(descriptor, pointer, length) == 0 && getsockname(descriptor, pointer, &length) == 0
            }
        }
        guard bound else {
            throw BenchFailure("binding to 127.0.0.1:0 failed: \(String(cString: strerror(errno)))")
        }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
func acceptsConnections(port: Int) -> Bool {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { return false }
    defer { close(descriptor) }
    var address = loopbackAddress(port: port)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

private func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return address
}
