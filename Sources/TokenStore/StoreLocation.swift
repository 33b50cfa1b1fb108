import Foundation
import PKCS11

/// The locations of TokenTLS's module and, for the embedded SoftHSM default, its token folder.
public struct StoreLocation: Sendable {
    public let modulePath: String
    /// The folder of the embedded default (`$XDG_DATA_HOME/tokentls`, else
    /// `~/.local/share/tokentls`), or nil when another module or an explicit
    /// `SOFTHSM2_CONF` is in use.
    public let dataFolder: String?

    /// Picks the module from `modulePath`, else `TOKENTLS_MODULE`, else SoftHSM.
    ///
    /// With SoftHSM and no `SOFTHSM2_CONF` in the environment, this prepares the
    /// embedded default: a private folder holding a SoftHSM configuration and its
    /// token folder, and points `SOFTHSM2_CONF` at it for this process. The
    /// system-wide `/var/lib/softhsm` is never used.
    public static func resolve(modulePath: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws
        -> StoreLocation
    {
        let path = modulePath ?? environment["TOKENTLS_MODULE"].flatMap { $0.isEmpty ? nil : $0 } ?? Module.defaultPath
        let isSoftHSM = (path as NSString).lastPathComponent.hasPrefix("libsofthsm2")
        guard isSoftHSM, environment["SOFTHSM2_CONF"] == nil else {
            return StoreLocation(modulePath: path, dataFolder: nil)
        }
        let base: String
        if let xdg = environment["XDG_DATA_HOME"], xdg.hasPrefix("/") {
            base = xdg
        } else {
            let home = environment["HOME"] ?? NSHomeDirectory()
            base = home + "/.local/share"
        }
        let folder = base + "/tokentls"
        try prepareSoftHSMFolder(folder)
        setenv("SOFTHSM2_CONF", folder + "/softhsm2.conf", 1)
        return StoreLocation(modulePath: path, dataFolder: folder)
    }

    /// Creates `folder/tokens` (mode 0700) and `folder/softhsm2.conf` when missing.
    public static func prepareSoftHSMFolder(_ folder: String) throws {
        let manager = FileManager.default
        let tokens = folder + "/tokens"
        do {
            try manager.createDirectory(atPath: tokens, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try manager.setAttributes([.posixPermissions: 0o700], ofItemAtPath: folder)
            let configuration = folder + "/softhsm2.conf"
            if !manager.fileExists(atPath: configuration) {
                let text = softHSMConfiguration(tokenFolder: tokens)
                try text.write(toFile: configuration, atomically: true, encoding: .utf8)
                try manager.setAttributes([.posixPermissions: 0o600], ofItemAtPath: configuration)
            }
        } catch {
            throw TokenStoreError(.file, "cannot prepare the token folder \(folder): \(error.localizedDescription)")
        }
    }

    /// A SoftHSM configuration that keeps its tokens in `tokenFolder`.
    public static func softHSMConfiguration(tokenFolder: String, mechanisms: String = "ALL") -> String {
        """
        # SoftHSM configuration written by TokenTLS.
        directories.tokendir = \(tokenFolder)
        objectstore.backend = file
        log.level = ERROR
        slots.removable = false
        slots.mechanisms = \(mechanisms)
        library.reset_on_fork = false

        """
    }
}
