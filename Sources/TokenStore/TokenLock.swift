import Foundation
import PKCS11
import Synchronization

/// An advisory lock per token, shared by every TokenTLS process of the user.
///
/// SoftHSM's file store lets another process see an object whose attributes are
/// still being written, and two processes writing at once crashed SoftHSM 2.6.1 in
/// tests. Writers (import, remove, repair, trust changes) therefore hold the lock
/// exclusively and readers hold it shared, so a listing never shows half an import.
/// The kernel drops the lock when a process dies, so a killed import never blocks
/// others. Calls must not nest: a thread that holds the lock must not take it again.
public enum TokenLock {
    public enum Mode: Sendable {
        case shared
        case exclusive
    }

    /// Runs `body` while holding the lock of `token` in `mode`. An exclusive lock
    /// first takes the module-wide lock exclusively too (see `withAllTokens`).
    public static func with<Result>(_ token: Token, _ mode: Mode, _ body: () throws -> Result) throws -> Result {
        if mode == .exclusive {
            return try withAllTokens(.exclusive) {
                try withFile(try lockPath(for: token), mode, body)
            }
        }
        return try withFile(try lockPath(for: token), mode, body)
    }

    /// Runs `body` while holding the lock that covers every token in `mode`.
    ///
    /// Listing tokens takes it shared, and writers (and token initialisation) take it
    /// exclusively, because SoftHSM cannot describe a token whose files another
    /// process is writing and then leaves it out of the slot list.
    public static func withAllTokens<Result>(_ mode: Mode, _ body: () throws -> Result) throws -> Result {
        try withFile(try lockFolder() + "/all-tokens.lock", mode, body)
    }

    private static func withFile<Result>(_ path: String, _ mode: Mode, _ body: () throws -> Result) throws -> Result {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw TokenStoreError(.file, "cannot open the token lock file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let operation = mode == .exclusive ? LOCK_EX : LOCK_SH
        while flock(descriptor, operation) != 0 {
            guard errno == EINTR else {
                throw TokenStoreError(.file, "cannot lock \(path): \(String(cString: strerror(errno)))")
            }
        }
        return try body()
    }

    /// `$XDG_RUNTIME_DIR/tokentls-locks` (else `/tmp/tokentls-locks-UID`), one file per
    /// token named after its manufacturer, model, serial and label.
    static func lockPath(for token: Token) throws -> String {
        let identity = [token.manufacturer, token.model, token.serial, token.label].joined(separator: "\n")
        if let path = paths.withLock({ $0[identity] }) {
            return path
        }
        let path = try lockFolder() + "/" + hexString(Digest.sha256(Array(identity.utf8)), uppercase: false).prefix(32) + ".lock"
        paths.withLock { $0[identity] = path }
        return path
    }

    /// Lock file paths by token, computed once: signing takes the lock for every signature.
    private static let paths = Mutex<[String: String]>([:])
    private static let checkedFolder = Mutex<String?>(nil)

    private static func lockFolder() throws -> String {
        if let folder = checkedFolder.withLock({ $0 }) {
            return folder
        }
        let folder = try prepareLockFolder()
        checkedFolder.withLock { $0 = folder }
        return folder
    }

    private static func prepareLockFolder() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        let folder: String
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/"),
            FileManager.default.isWritableFile(atPath: runtime)
        {
            folder = runtime + "/tokentls-locks"
        } else {
            folder = "/tmp/tokentls-locks-\(getuid())"
        }
        if mkdir(folder, 0o700) != 0 && errno != EEXIST {
            throw TokenStoreError(.file, "cannot create the lock folder \(folder): \(String(cString: strerror(errno)))")
        }
        var status = stat()
        guard lstat(folder, &status) == 0, status.st_mode & S_IFMT == S_IFDIR, status.st_uid == getuid() else {
            throw TokenStoreError(.file, "the lock folder \(folder) is not a folder owned by this user: remove it and try again")
        }
        return folder
    }
}
