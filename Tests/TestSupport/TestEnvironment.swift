import Foundation
import PKCS11
import Synchronization
import TokenStore

/// The real components every token test shares: the walk-through's certificates made
/// by `scripts/make-certs`, and a SoftHSM configuration whose token folder is a fresh
/// temporary folder for this test process.
///
/// Each test takes its own token (`makeToken`), so tests can run in parallel and
/// count objects without seeing each other's.
public final class TestEnvironment: Sendable {
    public static let shared: TestEnvironment = {
        do {
            return try TestEnvironment()
        } catch {
            fatalError("test environment setup failed: \(error)")
        }
    }()

    public let root: URL
    public let certificates: URL
    public let softHSMConfiguration: URL
    /// The same token folder with RSA-PSS switched off, as on a token without PSS.
    public let noPSSConfiguration: URL
    public let packageRoot: URL
    public let module: Module
    public static let userPIN = "test-user-pin-1234"
    public static let securityOfficerPIN = "test-so-pin-5678"
    private let tokenCreation = Mutex(0)

    private init() throws {
        packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        root = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(
            "tokentls-tests-\(getpid())-\(UUID().uuidString.prefix(8))")
        certificates = root.appendingPathComponent("certs")
        softHSMConfiguration = root.appendingPathComponent("softhsm2.conf")
        let tokens = root.appendingPathComponent("tokens")
        try FileManager.default.createDirectory(at: tokens, withIntermediateDirectories: true)
        try StoreLocation.softHSMConfiguration(tokenFolder: tokens.path).write(
            to: softHSMConfiguration, atomically: true, encoding: .utf8)
        setenv("SOFTHSM2_CONF", softHSMConfiguration.path, 1)
        noPSSConfiguration = root.appendingPathComponent("softhsm2-nopss.conf")
        let template = try String(
            contentsOf: packageRoot.appendingPathComponent("softhsm/softhsm2-nopss.conf.in"), encoding: .utf8)
        try template.replacingOccurrences(of: "@TOKENDIR@", with: tokens.path)
            .write(to: noPSSConfiguration, atomically: true, encoding: .utf8)

        let result = try TestEnvironment.run(
            packageRoot.appendingPathComponent("scripts/make-certs").path, ["-q", certificates.path])
        guard result.status == 0 else {
            throw TestFailure("scripts/make-certs failed (\(result.status)): \(result.standardError)")
        }
        module = try Module.load(path: Module.defaultPath)
    }

    /// Returns the path of a file written by `scripts/make-certs`.
    public func certificate(_ name: String) -> String {
        certificates.appendingPathComponent(name).path
    }

    /// Initialises a new token with a unique label and returns a logged-in store on it.
    ///
    /// Token creation and lookup hold one lock, because SoftHSM's `C_GetTokenInfo`
    /// returns `CKR_GENERAL_ERROR` for a slot whose token another thread is initialising.
    public func makeToken(_ prefix: String = "test") throws -> TokenStore {
        let token = try tokenCreation.withLock { counter -> Token in
            try TokenLock.withAllTokens(.exclusive) { try initializeToken(&counter, prefix) }
        }
        return try TokenStore(token: token, pin: SecretBytes(utf8: TestEnvironment.userPIN))
    }

    private func initializeToken(_ counter: inout Int, _ prefix: String) throws -> Token {
        counter += 1
        let label = "\(prefix)-\(counter)"
        guard let free = try module.tokens().first(where: { !$0.isInitialized }) else {
            throw TestFailure("SoftHSM offers no free slot")
        }
        return try module.initializeToken(
            inSlot: free.slot, label: label, securityOfficerPIN: SecretBytes(utf8: TestEnvironment.securityOfficerPIN),
            userPIN: SecretBytes(utf8: TestEnvironment.userPIN))
    }

    /// Decodes a fixture PFX.
    public func pfx(_ name: String, password: String? = nil) throws -> PFXContents {
        let data = try Data(contentsOf: URL(fileURLWithPath: certificate(name)))
        return try PFX.decode(Array(data), password: password.map { SecretBytes(utf8: $0) }, source: name)
    }

    /// The `tokentls` executable built next to the tests, or `TOKENTLS_BINARY`.
    public var binary: String {
        if let path = ProcessInfo.processInfo.environment["TOKENTLS_BINARY"] {
            return path
        }
        let buildFolder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [buildFolder, buildFolder.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent("tokentls").path
            if FileManager.default.isExecutableFile(atPath: path) {
                return path
            }
        }
        return packageRoot.appendingPathComponent(".build/debug/tokentls").path
    }

    /// Runs `tokentls` with the test token settings, a PIN from the environment and no terminal.
    public func tokentls(_ arguments: [String], token: String?, environment extra: [String: String] = [:]) throws -> ProcessResult
    {
        var environment = ProcessInfo.processInfo.environment
        environment["SOFTHSM2_CONF"] = softHSMConfiguration.path
        environment["TOKENTLS_PIN"] = TestEnvironment.userPIN
        environment["TOKENTLS_TOKEN"] = token
        environment.removeValue(forKey: "TOKENTLS_PFX_PASSWORD")
        for (key, value) in extra {
            environment[key] = value
        }
        return try TestEnvironment.run(binary, arguments, environment: environment)
    }

    /// Runs a program to completion without a terminal and collects its output.
    public static func run(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> ProcessResult {
        try spawn(path, arguments, environment: environment).wait()
    }

    /// Starts `tokentls` like `tokentls(_:token:environment:)` without waiting for it.
    public func spawnTokentls(_ arguments: [String], token: String?, environment extra: [String: String] = [:]) throws
        -> RunningProcess
    {
        var environment = ProcessInfo.processInfo.environment
        environment["SOFTHSM2_CONF"] = softHSMConfiguration.path
        environment["TOKENTLS_PIN"] = TestEnvironment.userPIN
        environment["TOKENTLS_TOKEN"] = token
        environment.removeValue(forKey: "TOKENTLS_PFX_PASSWORD")
        for (key, value) in extra {
            environment[key] = value
        }
        return try TestEnvironment.spawn(binary, arguments, environment: environment)
    }

    /// Starts a program without a terminal.
    ///
    /// Output goes through temporary files rather than pipes, because a daemon the
    /// program starts (nginx) would keep a pipe open long after the program exits.
    public static func spawn(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> RunningProcess
    {
        let folder = NSTemporaryDirectory() + "tokentls-run-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        let outputPath = folder + "/stdout"
        let errorPath = folder + "/stderr"

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

        let environmentLines = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environmentLines.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, envp)
        guard spawned == 0 else {
            try? FileManager.default.removeItem(atPath: folder)
            throw TestFailure("starting \(path) failed: \(String(cString: strerror(spawned)))")
        }
        return RunningProcess(pid: pid, folder: folder)
    }
}

/// A program started by `TestEnvironment.spawn`.
public struct RunningProcess: Sendable {
    public let pid: pid_t
    let folder: String

    /// Waits for the program to end and collects its output.
    public func wait() -> ProcessResult {
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signalled = (status & 0x7f) != 0
        return ProcessResult(
            status: signalled ? -1 : (status >> 8) & 0xff,
            standardOutput: (try? String(contentsOfFile: folder + "/stdout", encoding: .utf8)) ?? "",
            standardError: (try? String(contentsOfFile: folder + "/stderr", encoding: .utf8)) ?? "",
            terminatedBySignal: signalled)
    }

    /// Sends SIGKILL and waits for the program to end.
    public func kill() -> ProcessResult {
        _ = Glibc.kill(pid, SIGKILL)
        return wait()
    }
}

public struct ProcessResult: Sendable {
    public let status: Int32
    public let standardOutput: String
    public let standardError: String
    public let terminatedBySignal: Bool
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Returns every object handle in the token that the logged-in user can see.
public func allObjects(_ store: TokenStore) throws -> Set<ObjectHandle> {
    try store.pool.withSession { Set(try $0.findObjects([])) }
}

/// Returns the SHA-1 fingerprint of a PEM certificate file as `openssl x509` prints it, without colons.
public func opensslFingerprint(_ path: String) throws -> String {
    let result = try TestEnvironment.run("/usr/bin/openssl", ["x509", "-in", path, "-noout", "-fingerprint", "-sha1"])
    guard result.status == 0, let value = result.standardOutput.split(separator: "=").last else {
        throw TestFailure("openssl x509 -fingerprint failed for \(path): \(result.standardError)")
    }
    return value.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: ":", with: "")
}
